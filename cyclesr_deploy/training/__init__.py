"""Training of CycleGAN (unpaired) and supervised generators. Needs the ``train`` extra (torch)."""
