"""nlpress: a compiler that makes NLP models smaller and faster."""
