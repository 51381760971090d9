"""Training data, from a name to batches: `reading` turns a built-in, a local file or folder, or a
Hub id into raw rows; `formats` decides which columns hold the prompt and the response (names in
`columns`); `preparing` tokenizes with response-only labels, holds rows out and batches them.
Bad data becomes a `UserError` that names the file and, where it can, the line."""
