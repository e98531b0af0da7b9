"""Training the embedded default model: data synthesis, codec and LM training (`duplex data|train`)."""
