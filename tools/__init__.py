"""Offline preparation: ILSVRC in, verified 256px WebDataset shards and their statistics out."""
