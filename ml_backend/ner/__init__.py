"""Named-entity pre-annotation: alignment of proposals to spans (pure) and the LLM extractor."""
