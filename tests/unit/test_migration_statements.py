"""A migration file is split into statements at semicolons, never inside quotes, comments or function bodies."""

from __future__ import annotations

from pathlib import Path

from webapp.postgres.migration_files import MigrationFile, split_statements


def test_statements_split_at_semicolons_and_comment_only_tails_are_dropped():
    assert split_statements("-- header\nCREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n-- done\n") == [
        "-- header\nCREATE TABLE a (id int)", "INSERT INTO a VALUES (1)"]


def test_semicolons_inside_strings_identifiers_comments_and_dollar_quotes_do_not_split():
    text = ("INSERT INTO t VALUES ('a;b', 'it''s; fine');\n"
            'CREATE TABLE "odd;name" (id int);\n'
            "/* a; block; comment */ SELECT 1;\n"
            "-- a; line comment\nDO $body$ BEGIN PERFORM 1; PERFORM 2; END $body$;\n"
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;")
    assert len(split_statements(text)) == 5
    assert split_statements(text)[3].endswith("END $body$")


def test_the_markers_in_the_header_say_how_a_file_runs(tmp_path: Path):
    (tmp_path / "0001_x.sql").write_text("-- x\n-- migrate: no-transaction\n-- migrate: batches\n\n"
                                         "UPDATE t SET v = 1;\n")
    (tmp_path / "0002_y.sql").write_text("-- y\n\n-- migrate: no-transaction (only in the header counts)\nSELECT 1;\n")
    x, y = MigrationFile.read(tmp_path / "0001_x.sql"), MigrationFile.read(tmp_path / "0002_y.sql")
    assert (x.transactional, x.batches) == (False, True)
    assert (y.transactional, y.batches) == (True, False)
    assert x.checksum != y.checksum and len(x.checksum) == 64
