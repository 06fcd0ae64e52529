"""One module per outside system; each imports the domain, never the other way round."""
