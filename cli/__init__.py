"""The `duplex` command line: one module per command group (run, serve, chat, codec, convert, export, train,
bench); `main` builds the parser. The top layer: it imports every other package, none imports it."""
