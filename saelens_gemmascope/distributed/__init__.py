"""Training under torchrun: the job's spec and the collectives the runners and the suite use."""
