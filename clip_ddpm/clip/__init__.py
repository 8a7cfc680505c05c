"""Everything CLIP but the network: Hugging Face weights, tokenizer, preprocessing, the (sharded)
encoder and the embedding cache of a dataset; `clip.train` trains a small CLIP contrastively."""
