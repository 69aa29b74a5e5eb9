"""`alexnet-bench train` (bench.py: the training step with synthetic and with real input) and
`alexnet-bench comm` (comm.py: what DDP and the hybrid scheme move between processes). They build
the trainer's own model, optimizer and step; the training loop never imports them."""
