"""Defences against hostile and broken inputs.

Each module owns one kind of check and raises :class:`~depthprune.errors.DepthpruneError`
with one sentence naming the file or flag:

* :mod:`.model_files`: remote code (``auto_map``) refused without ``--trust-remote-code``,
  ``config.json``/``tokenizer_config.json`` that are not JSON objects, truncated or corrupt
  safetensors, pickles that are not weights-only, encoder (non-causal) models.
* :mod:`.outputs`: ``--out`` never equal to / inside / containing an input, ``--overwrite``
  replaces only a previous depthprune output or an empty directory, no-clobber atomic
  renames, stale temporary siblings of killed runs, unwritable locations found early.
* :mod:`.settings`: batch size, seed, sequence length vs. the model's position limit, devices.
* :mod:`.network`: fail fast with one sentence when the Hugging Face Hub cannot be reached.
* :mod:`.signals`: SIGTERM behaves like Ctrl-C (clean-up runs, exit 143).
"""
