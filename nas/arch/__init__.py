"""Architecture specs: the spec itself, its codecs and conversions, the canonical networks."""
