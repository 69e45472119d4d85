"""The README's promises that a test can keep: its flag table is made from Config (so a new or
changed flag cannot go stale there), and it stays short enough to read in ten minutes."""
from tests.conftest import ROOT


def test_the_readme_flag_table_is_the_config():
    import config
    readme = (ROOT / "README.md").read_text()
    assert config.flags_table() in readme, "README's flag table is stale: paste python -c 'import config; print(config.flags_table())'"


def test_the_flag_table_has_a_row_per_field_with_its_default():
    import dataclasses

    import config
    rows = config.flags_table().splitlines()[2:]
    fields = dataclasses.fields(config.Config)
    assert len(rows) == len(fields)
    for row, f in zip(rows, fields):
        assert row.startswith(f"| `--{f.name.replace('_', '-')}` | `{f.default!r}` |")


def test_the_readme_stays_under_25000_characters():
    assert len((ROOT / "README.md").read_text()) <= 25_000
