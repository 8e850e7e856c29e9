"""Training data: reading photos and drawings, framing, buckets, captions, the prepared-set format."""
