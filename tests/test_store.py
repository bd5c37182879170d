"""The memory-mapped molecule store (georecon_jax/data/store.py) and the streaming SDF conversion
into it (georecon_jax/data/sdf.py): a store holds exactly the molecules it was given, its arrays
are memory maps, a store-backed `Molecules` pickles as its folder, the streaming reader reads
what RDKit's SDMolSupplier reads, a conversion killed with SIGKILL at any point resumes into the
identical store, and a partial or corrupt store is rebuilt rather than used. Real QM9 molecules."""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from conftest import ROOT, qm9_mol
from georecon_jax.data import sdf as sdf_data
from georecon_jax.data import store as store_lib
from georecon_jax.data.records import DataError, Molecules

# ------------------------------------------------------------------------------- SDF helpers


def qm9_record(mols, k, name=None, props=None):
    """A molblock of QM9 molecule k with its real coordinates and bonds from its geometry."""
    block = Chem.MolToMolBlock(qm9_mol(mols, k)).split("\n", 1)[1]  # the name line is ours
    text = f"{name if name is not None else f'qm9_{int(mols.ids[k])}'}\n{block}"
    for key, value in (props or {}).items():
        text += f"> <{key}>\n{value}\n\n"
    return text + "$$$$\n"


def odd_records():
    """Records that the reader must skip, each with the reason it must give."""
    flat = Chem.MolFromSmiles("CCN")  # 2D coordinates
    no_h = Chem.MolFromSmiles("CCO")  # 3D, but its hydrogens are implicit
    AllChem.EmbedMolecule(no_h, randomSeed=0)
    empty = "empty\n     RDKit          3D\n\n  0  0  0  0  0  0  0  0  0  0999 V2000\nM  END\n"
    return {
        "2D": Chem.MolToMolBlock(flat) + "$$$$\n",
        "implicit": Chem.MolToMolBlock(no_h) + "$$$$\n",
        "broken": "broken\n  garbage\n\nthis is not a counts line\nM  END\n$$$$\n",
        "empty": empty + "$$$$\n",
    }


def write_sdf(path, mols, n, odd_at=(), last_without_separator=False, newline="\n"):
    """n QM9 records, odd records inserted at the given indices (odd_at: {index: kind})."""
    odd = odd_records()
    odd_at = dict(odd_at)
    parts, k = [], 0
    while len(parts) < n:
        i = len(parts)
        if i in odd_at:
            parts.append(odd[odd_at[i]])
        else:
            parts.append(qm9_record(mols, k % len(mols), props={"k": k} if k % 3 == 0 else None))
            k += 1
    text = "".join(parts)
    if last_without_separator:
        text = text[: text.rindex("$$$$")]
    with open(path, "w", newline="") as f:
        f.write(text.replace("\n", newline))
    return path


def rdkit_records(path):
    """(index, name, z, positions, reason) by RDKit's SDMolSupplier (chem.structures.read_sdf)."""
    from georecon_jax.chem.structures import read_sdf

    return list(read_sdf(str(path)))


def streamed_records(path):
    return [
        (i, *sdf_data.parse_record(i, text))
        for i, (_, text) in enumerate(sdf_data.iter_sdf_records(str(path)))
    ]


def assert_same_records(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra[0] == rb[0] and ra[1] == rb[1] and ra[4] == rb[4], (ra, rb)
        if ra[2] is None:
            assert rb[2] is None
        else:
            np.testing.assert_array_equal(ra[2], rb[2])
            np.testing.assert_array_equal(ra[3], rb[3])


def store_arrays(path):
    """Every file of a finished store, read: what 'the same store' compares."""
    mols, splits, meta = store_lib.open_store(str(path))
    out = {k: np.array(getattr(mols, k)) for k in store_lib.ARRAYS}
    out.update({f"split_{k}": np.array(v) for k, v in splits.items()})
    return out, meta


def assert_same_store(a, b):
    (arrays_a, meta_a), (arrays_b, meta_b) = store_arrays(a), store_arrays(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for k in arrays_a:
        assert arrays_a[k].dtype == arrays_b[k].dtype, k
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)
    assert meta_a == meta_b


# ------------------------------------------------------------------------------------ store


def test_store_holds_the_molecules_it_was_given_as_memory_maps(tmp_path, qm9_small):
    mols, splits = qm9_small
    meta = {"source": "qm9 test"}
    got, got_splits, got_meta = store_lib.write_store(str(tmp_path / "s"), mols, splits, meta, chunk_size=37)
    assert len(got) == len(mols) == 400
    for k in store_lib.ARRAYS:
        a, b = getattr(got, k), getattr(mols, k)
        assert isinstance(a, np.memmap) and not a.flags.writeable, k
        assert a.dtype == store_lib.DTYPES[k] and a.shape == b.shape, k
        np.testing.assert_array_equal(a, b, err_msg=k)  # targets are float64: bit-exact
    assert got.target_names == mols.target_names and got.target_units == mols.target_units
    for k in (0, 17, 399):
        za, pa = got.molecule(k)
        zb, pb = mols.molecule(k)
        np.testing.assert_array_equal(za, zb)
        np.testing.assert_array_equal(pa, pb)
    for k, v in splits.items():
        np.testing.assert_array_equal(got_splits[k], v)
    assert got_meta["source"] == "qm9 test" and got_meta["n_molecules"] == 400
    assert got_meta["n_atoms"] == int(mols.offsets[-1])
    assert not os.path.exists(tmp_path / "s" / store_lib.PARTIAL)  # the chunks are gone
    # the same arrays whatever the chunk size
    store_lib.write_store(str(tmp_path / "t"), mols, splits, meta, chunk_size=1000)
    assert_same_store(tmp_path / "s", tmp_path / "t")


def test_store_backed_molecules_pickle_as_their_folder(tmp_path, qm9_small):
    mols, splits = qm9_small
    path = tmp_path / "s"
    got, _, _ = store_lib.write_store(str(path), mols, splits, {})
    data_bytes = got.positions.nbytes + got.atomic_numbers.nbytes + got.targets.nbytes
    blob = pickle.dumps(got)
    assert data_bytes > 100_000 and len(blob) < 10_000
    back = pickle.loads(blob)
    assert isinstance(back.positions, np.memmap)
    for k in store_lib.ARRAYS:
        np.testing.assert_array_equal(getattr(back, k), getattr(mols, k))
    assert back.target_names == mols.target_names
    # a worker process (spawned: nothing inherited) unpickles it by mapping the same files
    code = "import pickle, sys, numpy as np; m = pickle.load(sys.stdin.buffer); "
    code += "print(type(m.positions).__name__, float(np.asarray(m.positions, np.float64).sum()))"
    r = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, cwd=ROOT, timeout=60)
    kind, total = r.stdout.decode().split()
    assert r.returncode == 0 and kind == "memmap"
    assert float(total) == pytest.approx(float(np.asarray(mols.positions, np.float64).sum()), rel=1e-12)

    # an in-RAM Molecules (and a subset of a store-backed one) pickles its data, as before
    ram = mols.subset(np.arange(len(mols)))
    assert not isinstance(ram.positions, np.memmap)
    in_ram = pickle.dumps(ram)
    assert len(in_ram) > data_bytes
    again = pickle.loads(in_ram)
    for k in store_lib.ARRAYS:
        np.testing.assert_array_equal(getattr(again, k), getattr(mols, k))
    assert again.target_names == mols.target_names and "_source" not in again.__dict__
    sub = got.subset([3, 1])
    assert not isinstance(sub.positions, np.memmap)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(sub)).positions, mols.subset([3, 1]).positions)

    # a pickle of a store that has since been rebuilt is refused rather than read
    store_lib.write_store(str(path), mols.subset(np.arange(10)), {"train": np.arange(10)}, {})
    with pytest.raises(DataError, match="changed"):
        pickle.loads(blob)


def test_the_qm9_cache_is_memory_mapped_and_pickles_as_its_file(qm9_small):
    mols, splits = qm9_small
    assert isinstance(mols.positions, np.memmap) and not mols.positions.flags.writeable
    blob = pickle.dumps(mols)
    assert len(blob) < 10_000 < mols.positions.nbytes
    back = pickle.loads(blob)
    for k in store_lib.ARRAYS:
        np.testing.assert_array_equal(getattr(back, k), getattr(mols, k))
    assert back.target_names == mols.target_names


def test_n_atoms_follows_the_offsets(qm9_small):
    mols, _ = qm9_small
    m = Molecules.from_lists([np.array([1, 1]), np.array([6, 1, 1])], [np.zeros((2, 3)), np.ones((3, 3))])
    assert m.n_atoms.tolist() == [2, 3] and m.n_atoms is m.n_atoms
    m.offsets = np.array([0, 1, 5])
    assert m.n_atoms.tolist() == [1, 4]
    np.testing.assert_array_equal(mols.n_atoms, np.diff(np.asarray(mols.offsets)))


# --------------------------------------------------------------------------- streaming reader


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_the_streaming_reader_reads_what_rdkit_reads(tmp_path, qm9_small, monkeypatch, newline):
    mols, _ = qm9_small
    odd = {2: "2D", 5: "implicit", 6: "broken", 9: "empty"}
    path = write_sdf(tmp_path / "odd.sdf", mols, 14, odd, last_without_separator=True, newline=newline)
    expected = rdkit_records(path)
    assert len(expected) == 14
    reasons = {i: r for i, _, _, _, r in expected if r}
    assert sorted(reasons) == sorted(odd)  # the file is what it is meant to be
    assert "2D coordinates" in reasons[2] and "implicit" in reasons[5] and reasons[9] == "no atoms"
    assert_same_records(streamed_records(path), expected)
    # records that straddle the reader's blocks: the same records, the same byte offsets
    ends = [end for end, _ in sdf_data.iter_sdf_records(str(path))]
    monkeypatch.setattr(sdf_data, "_BLOCK", 7)
    assert_same_records(streamed_records(path), expected)
    assert [end for end, _ in sdf_data.iter_sdf_records(str(path))] == ends
    assert ends[-1] == os.path.getsize(path)
    # reading from a record's byte offset gives the records from there on
    tail = list(sdf_data.iter_sdf_records(str(path), ends[7]))
    assert [e for e, _ in tail] == ends[8:]


# ------------------------------------------------------------------- resuming after SIGKILL

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from georecon_jax.data import sdf, store

    sdf_path, out, point = sys.argv[1], sys.argv[2], sys.argv[3]
    W = store.StoreWriter

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    save_state, chunk, finish = W._save_state, W._chunk, W.finish
    state = {"finishing": False, "reads": 0}

    def patched_save_state(self):
        if point == "before_state" and len(self.chunks) == 3:
            die()  # chunk 3 is on disk, the state does not list it
        save_state(self)
        if point == "after_state" and len(self.chunks) == 3:
            die()
        if point == "external" and self.chunks:
            time.sleep(0.3)  # slow enough to be killed from outside after a few chunks

    def patched_chunk(self, c):
        if state["finishing"]:
            state["reads"] += 1
            if point == "in_finish" and state["reads"] == 3:
                die()  # the final arrays are half written
        return chunk(self, c)

    def patched_finish(self, splits, meta):
        state["finishing"] = True
        return finish(self, splits, meta)

    def patched_write_json(path, obj):
        if point == "before_meta" and path.endswith(store.META):
            die()  # every array written, no meta.json
        return write_json(path, obj)

    write_json = store._write_json_atomic
    W._save_state, W._chunk, W.finish = patched_save_state, patched_chunk, patched_finish
    store._write_json_atomic = patched_write_json
    sdf.convert_sdf(sdf_path, out, chunk_size=10, validation_fraction=0.2, progress=False)
    print("finished without being killed")
""")


@pytest.fixture(scope="module")
def sdf_file(tmp_path_factory, qm9_small):
    d = tmp_path_factory.mktemp("sdf")
    path = write_sdf(d / "qm9.sdf", qm9_small[0], 95, {4: "2D", 33: "implicit", 60: "broken"})
    clean = d / "clean.store"
    sdf_data.convert_sdf(str(path), str(clean), chunk_size=10, validation_fraction=0.2, progress=False)
    return path, clean


@pytest.mark.parametrize("point", ["after_state", "before_state", "in_finish", "before_meta", "external"])
def test_a_conversion_killed_with_sigkill_resumes_into_the_same_store(tmp_path, sdf_file, point, monkeypatch):
    path, clean = sdf_file
    out = tmp_path / "killed.store"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(out), point],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if point == "external":  # kill -9 from outside once some chunks are written
        state_file = out / store_lib.PARTIAL / store_lib.STATE
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if len(json.loads(state_file.read_text())["chunks"]) >= 2:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not store_lib.is_complete(str(out))
    with pytest.raises(store_lib.IncompleteStore):
        store_lib.open_store(str(out))
    state = json.loads((out / store_lib.PARTIAL / store_lib.STATE).read_text())
    done = state["cursor"]["records"] if state["cursor"] else 0
    assert len(state["chunks"]) >= 2 and done >= 20

    parsed = []
    parse = sdf_data.parse_record
    monkeypatch.setattr(sdf_data, "parse_record", lambda i, text: parsed.append(i) or parse(i, text))
    mols, splits, meta, report = sdf_data.convert_sdf(
        str(path), str(out), chunk_size=10, validation_fraction=0.2, progress=False
    )
    assert parsed == list(range(done, 95))  # it resumed where the state said, not from the start
    assert_same_store(out, clean)
    assert [s["record"].split(" (")[0] for s in report.skipped] == [
        "qm9.sdf record 4",
        "qm9.sdf record 33",
        "qm9.sdf record 60",
    ]
    assert report.total == 95 and meta["skipped"] == 3 and len(mols) == 92
    assert not os.path.exists(out / store_lib.PARTIAL)


def test_a_resumed_conversion_with_another_chunk_size_gives_the_same_store(tmp_path, sdf_file, monkeypatch):
    path, clean = sdf_file
    out = str(tmp_path / "s.store")
    key = sdf_data._cache_key(str(path), None, 0, 0.2)
    writer = store_lib.StoreWriter(out, key=key, chunk_size=7)
    for i, end, label, z, pos, reason in sdf_data._records(str(path)):
        if reason:
            writer.skip(f"qm9.sdf record {i} ({label})", reason)
        else:
            writer.add(z, pos, i)
        if writer.full:
            writer.flush({"records": i + 1, "offset": end, "tail": sdf_data._tail(str(path), end)})
        if i == 40:
            break  # stops without a flush: records 35..40 are read again
    parsed = []
    parse = sdf_data.parse_record
    monkeypatch.setattr(sdf_data, "parse_record", lambda i, text: parsed.append(i) or parse(i, text))
    sdf_data.convert_sdf(str(path), out, chunk_size=25, validation_fraction=0.2, progress=False)
    assert parsed[0] == 35  # resumed after the last flushed chunk
    assert_same_store(out, clean)


def _partial_conversion(path: str, out: str, stop: int):
    """A conversion of ``path`` into ``out`` interrupted after record ``stop`` (chunks of 7)."""
    writer = store_lib.StoreWriter(out, key=sdf_data._cache_key(path, None, 0, 0.2), chunk_size=7)
    for i, end, label, z, pos, reason in sdf_data._records(path):
        if reason:
            writer.skip(f"record {i} ({label})", reason)
        else:
            writer.add(z, pos, i)
        if writer.full:
            writer.flush({"records": i + 1, "offset": end, "tail": sdf_data._tail(path, end)})
        if i == stop:
            return writer.cursor


def test_a_file_changed_under_an_interrupted_conversion_is_converted_again(
    tmp_path, sdf_file, monkeypatch, caplog
):
    """Other bytes before the resume offset, the same size and modification time (the store's
    key): the conversion starts again from record 0 and gives the new file's store."""
    path, _ = sdf_file
    copy = tmp_path / "copy.sdf"
    copy.write_bytes(path.read_bytes())
    out = str(tmp_path / "s.store")
    cursor = _partial_conversion(str(copy), out, 40)
    key = sdf_data._cache_key(str(copy), None, 0, 0.2)
    st = os.stat(copy)
    data = bytearray(copy.read_bytes())
    pos = cursor["offset"] - 30  # inside the bytes kept with the cursor
    data[pos] = ord("7") if data[pos] != ord("7") else ord("8")
    copy.write_bytes(bytes(data))
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sdf_data._cache_key(str(copy), None, 0, 0.2) == key  # the store's key cannot tell
    parsed = []
    parse = sdf_data.parse_record
    monkeypatch.setattr(sdf_data, "parse_record", lambda i, text: parsed.append(i) or parse(i, text))
    with caplog.at_level("WARNING"):
        sdf_data.convert_sdf(str(copy), out, chunk_size=25, validation_fraction=0.2, progress=False)
    assert parsed[0] == 0 and "converting it again from the start" in caplog.text
    fresh = str(tmp_path / "fresh.store")
    sdf_data.convert_sdf(str(copy), fresh, chunk_size=25, validation_fraction=0.2, progress=False)
    assert_same_store(out, fresh)


SLOW_LOADER = textwrap.dedent("""
    import sys, time
    from georecon_jax.data import sdf, store

    save_state, convert = store.StoreWriter._save_state, sdf.convert_sdf

    def slow_save_state(self):
        save_state(self)
        time.sleep(0.1)  # a conversion long enough for the second process to arrive during it

    def counted_convert(*a, **k):
        print("converting", flush=True)
        return convert(*a, **k)

    store.StoreWriter._save_state, sdf.convert_sdf = slow_save_state, counted_convert
    mols, _ = sdf.load_sdf(sys.argv[1], cache_dir=sys.argv[2], validation_fraction=0.2, verbose=False,
                           chunk_size=10)
    print("molecules", len(mols))
""")


def test_two_processes_loading_one_file_convert_it_once(tmp_path, sdf_file):
    """Two runs started together on a new file: the second waits for the first's store (a file
    lock) instead of writing the same chunks at the same time."""
    path, clean = sdf_file
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def start():
        cmd = [sys.executable, "-c", SLOW_LOADER, str(path), str(cache)]
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    first = start()
    deadline = time.time() + 60
    while time.time() < deadline and not list(cache.glob("*.store/_partial/chunk_*.npz")):
        time.sleep(0.02)  # the first one is converting
    second = start()
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [e[-2000:] for _, e in outs]
    assert [o.count("converting") for o, _ in outs] == [1, 0]
    assert all("molecules 92" in o for o, _ in outs)
    [store] = list(cache.glob("*.store"))
    assert_same_store(store, clean)


# ----------------------------------------------------------------- partial and corrupt stores


def _load(path, cache, **kw):
    return sdf_data.load_sdf(str(path), cache_dir=str(cache), validation_fraction=0.2, verbose=False, **kw)


@pytest.mark.parametrize("damage", ["no_meta", "garbage_meta", "truncated_positions", "missing_split"])
def test_a_partial_or_corrupt_store_is_rebuilt_not_used(tmp_path, sdf_file, monkeypatch, damage):
    path, clean = sdf_file
    cache = tmp_path / "cache"
    mols, _ = _load(path, cache)
    [store] = [cache / f for f in os.listdir(cache) if f.endswith(".store")]
    reference = {k: np.array(getattr(mols, k)) for k in store_lib.ARRAYS}
    del mols
    if damage == "no_meta":
        os.remove(store / "meta.json")
    elif damage == "garbage_meta":
        (store / "meta.json").write_text("{not json")
    elif damage == "truncated_positions":
        data = (store / "positions.npy").read_bytes()
        (store / "positions.npy").write_bytes(data[: len(data) // 2])
    else:
        os.remove(store / "split_validation.npy")
    with pytest.raises(DataError):
        store_lib.open_store(str(store))

    calls = []
    convert = sdf_data.convert_sdf
    monkeypatch.setattr(sdf_data, "convert_sdf", lambda *a, **k: calls.append(1) or convert(*a, **k))
    again, splits = _load(path, cache)
    assert calls == [1]  # rebuilt
    for k, v in reference.items():
        np.testing.assert_array_equal(getattr(again, k), v)
    assert_same_store(store, clean)
    _load(path, cache)
    assert calls == [1]  # and then used


# ------------------------------------------------------------------------------- bad input


def test_bad_input_gives_one_line_errors_and_leaves_no_store(tmp_path, qm9_small):
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="no such SDF file") as e:
        _load(tmp_path / "absent.sdf", cache)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="no such SDF file"):
        _load(tmp_path, cache)  # a folder

    odd = odd_records()
    (tmp_path / "flat.sdf").write_text(odd["2D"] + odd["implicit"] + odd["broken"])
    (tmp_path / "empty.sdf").write_text("")
    (tmp_path / "one.sdf").write_text(qm9_record(qm9_small[0], 3) + odd["2D"])
    for name, match in [
        ("flat.sdf", "no usable record"),
        ("empty.sdf", "no usable record"),
        ("one.sdf", "1 usable molecule"),
    ]:
        with pytest.raises(DataError, match=match) as e:
            _load(tmp_path / name, cache)
        assert "\n" not in str(e.value) and name in str(e.value)
    assert not [f for f in os.listdir(cache) if f.endswith(".store")]  # nothing half-built left

    # strict: the store is kept, the error names the skipped records
    write_sdf(tmp_path / "some_bad.sdf", qm9_small[0], 12, {3: "broken"})
    with pytest.raises(DataError, match="skipped 1: record some_bad.sdf record 3"):
        _load(tmp_path / "some_bad.sdf", cache, strict=True)
    with pytest.raises(DataError, match="1 records were skipped"):
        _load(tmp_path / "some_bad.sdf", cache, strict=True)
    assert len(_load(tmp_path / "some_bad.sdf", cache)[0]) == 11
