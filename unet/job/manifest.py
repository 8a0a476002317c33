"""The nightly manifest: a text file (path or URL) with one 'INPUT OUTPUT' pair per line; '#' starts a
comment. Every line is checked as the command line's own INPUT and OUTPUT are, and no OUTPUT may appear
twice (two jobs writing one output would lose data)."""

from __future__ import annotations

from unet.errors import UNetError, redact
from unet.files import read_small_file
from unet.io.urls import check_url, location, resolve_storage_options

MAX_MANIFEST_BYTES = 64 * 2**20  # about 10^6 lines


def read_manifest(url: str, storage_options: dict) -> tuple[tuple[str, str], ...]:
    """The (INPUT, OUTPUT) pairs of the manifest at ``url``; UNetError (one line) for anything else."""
    name = redact(url)
    pairs: list[tuple[str, str]] = []
    seen: dict[tuple[str, str], int] = {}  # output location -> line
    for number, line in enumerate(_read_text(url, storage_options, name).splitlines(), start=1):
        words = line.split("#")[0].split()
        if not words:
            continue
        where = f"--manifest {name} line {number}"
        if len(words) != 2:
            raise UNetError(f"{where}: expected 'INPUT OUTPUT', found {len(words)} field(s)")
        if not all(word.isprintable() for word in words):
            raise UNetError(f"{where}: expected printable paths or URLs, found a control character")
        check_url(words[0], f"{where}: INPUT")
        check_url(words[1], f"{where}: OUTPUT", output=True)
        output = location(words[1])
        if output in seen:
            raise UNetError(f"{where}: expected each OUTPUT once, found {redact(words[1])} on line "
                            f"{seen[output]} too")
        seen[output] = number
        pairs.append((words[0], words[1]))
    if not pairs:
        raise UNetError(f"--manifest {name}: expected at least one 'INPUT OUTPUT' line, found none")
    return tuple(pairs)


def _read_text(url: str, storage_options: dict, name: str) -> str:
    """The manifest's text: at most MAX_MANIFEST_BYTES of UTF-8."""
    data = read_small_file(url, resolve_storage_options(url, storage_options), what=f"--manifest {name}",
                           expected="a text file of 'INPUT OUTPUT' lines", limit=MAX_MANIFEST_BYTES)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UNetError(f"--manifest {name}: expected UTF-8 text, found an undecodable byte at offset "
                        f"{e.start}") from None
