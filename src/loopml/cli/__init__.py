"""`loopml …`: thin commands that parse, call the client or services, and render."""
