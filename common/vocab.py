"""Vocabulary: token ids <-> text, behind a small Protocol so backends can be swapped.

Id convention (T5 + bos): pad 0, eos 1, unk 2, bos 3. Optional sentinels <extra_id_N> are
appended after the backend's pieces and count DOWN from the last id, as in T5.

A saved model `X.model` may have a JSON sidecar `X.json`; its "extra_ids" key (default 0) is
what makes `load_vocab(path)` rebuild exactly the vocabulary that was saved.
"""
from __future__ import annotations

import glob
import json
import os
import re
import tempfile
from typing import Iterable, Protocol, runtime_checkable

import sentencepiece as spm

PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, 3
CONTROL_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")
_SENTINEL_RE = re.compile(r"<extra_id_(\d+)>")


@runtime_checkable
class Vocabulary(Protocol):
    """What models and pipelines may rely on; a HF `tokenizers` backend would implement it too."""

    vocab_size: int
    pad_id: int
    eos_id: int
    unk_id: int
    bos_id: int
    path: str  # the tokenizer file it was loaded from (.model or tokenizer.json)

    @property
    def cls_id(self) -> int: ...
    @property
    def sep_id(self) -> int: ...
    @property
    def mask_id(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def piece_to_id(self, piece: str) -> int: ...
    def sentinel_id(self, i: int) -> int: ...
    def save_to(self, directory: str) -> str: ...


def sidecar_path(model_path: str) -> str:
    """`X.model` -> `X.json`: where metadata (extra_ids, provenance) about a model lives."""
    return os.path.splitext(model_path)[0] + ".json"


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write via a temp file in the same dir + os.replace, so readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class SentencePieceVocab:
    """SentencePiece model (pad 0 / eos 1 / unk 2 / bos 3) plus `extra_ids` T5 sentinels."""

    def __init__(self, model_path: str, extra_ids: int = 0):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(
                f"SentencePiece model '{model_path}' not found; train one with: python -m "
                "common.tokenizer --dataset=... --data_dir=... --output=PATH.model")
        if extra_ids < 0:
            raise ValueError(f"extra_ids must be >= 0, got {extra_ids}")
        self.model_path = model_path
        self.extra_ids = extra_ids
        self._sp = spm.SentencePieceProcessor(model_file=model_path)
        self._sp_size = self._sp.get_piece_size()
        expected = {"pad": PAD_ID, "eos": EOS_ID, "unk": UNK_ID, "bos": BOS_ID}
        actual = {"pad": self._sp.pad_id(), "eos": self._sp.eos_id(),
                  "unk": self._sp.unk_id(), "bos": self._sp.bos_id()}
        if actual != expected:
            raise ValueError(f"SentencePiece model '{model_path}' has special ids {actual}; this "
                             f"library needs {expected} (train it with common.tokenizer)")
        self.vocab_size = self._sp_size + extra_ids
        self.pad_id, self.eos_id, self.unk_id, self.bos_id = PAD_ID, EOS_ID, UNK_ID, BOS_ID

    @property
    def path(self) -> str:
        """`model_path` under the name every backend has (`TokenizersVocab.path`)."""
        return self.model_path

    def _control_id(self, piece: str) -> int:
        i = self._sp.piece_to_id(piece)
        if i == self.unk_id or not self._sp.is_control(i):
            raise ValueError(f"SentencePiece model '{self.model_path}' has no control symbol "
                             f"{piece!r}; retrain it with common.tokenizer (it adds "
                             f"{CONTROL_SYMBOLS})")
        return i

    @property
    def cls_id(self) -> int:
        return self._control_id("[CLS]")

    @property
    def sep_id(self) -> int:
        return self._control_id("[SEP]")

    @property
    def mask_id(self) -> int:
        return self._control_id("[MASK]")

    def encode(self, text: str) -> list[int]:
        """Token ids for `text`; no bos/eos added (the data pipeline decides that)."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts in one C++ call (multithreaded inside SentencePiece)."""
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Text for `ids`: stops at the first eos, drops pad, prints sentinels as <extra_id_N>."""
        parts: list[str] = []
        run: list[int] = []

        def flush() -> None:
            if run:
                text = self._sp.decode(run)
                # SentencePiece drops a leading space; keep it when this run follows a sentinel.
                if parts and self._sp.id_to_piece(run[0]).startswith("\u2581"):
                    text = " " + text
                parts.append(text)
                run.clear()

        for i in (int(i) for i in ids):
            if i == self.eos_id:
                break
            if i == self.pad_id:
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i >= self._sp_size:
                flush()
                parts.append(f"<extra_id_{self.vocab_size - 1 - i}>")
            else:
                run.append(i)
        flush()
        return "".join(parts)

    def piece_to_id(self, piece: str) -> int:
        """Id of a piece or '<extra_id_N>'; unknown pieces raise rather than silently become unk."""
        m = _SENTINEL_RE.fullmatch(piece)
        if m:
            return self.sentinel_id(int(m.group(1)))
        i = self._sp.piece_to_id(piece)
        if i == self.unk_id and piece != self._sp.id_to_piece(self.unk_id):
            raise ValueError(f"piece {piece!r} is not in the vocabulary '{self.model_path}'")
        return i

    def sentinel_id(self, i: int) -> int:
        """Id of <extra_id_i>: the last id for i=0, counting down (T5 convention)."""
        if not 0 <= i < self.extra_ids:
            raise ValueError(f"sentinel <extra_id_{i}> does not exist: this vocabulary has "
                             f"extra_ids={self.extra_ids}")
        return self.vocab_size - 1 - i

    def save_to(self, directory: str) -> str:
        """Copy the model (+ sidecar with extra_ids and the source's provenance) into `directory`.

        Returns the copied model path; `load_vocab` accepts it or `directory`.
        """
        target = os.path.join(directory, os.path.basename(self.model_path))
        meta = {}
        if os.path.isfile(sidecar_path(self.model_path)):
            with open(sidecar_path(self.model_path)) as f:
                meta = json.load(f)
        meta.update(backend="sentencepiece", extra_ids=self.extra_ids)
        if os.path.abspath(target) != os.path.abspath(self.model_path):
            with open(self.model_path, "rb") as f:
                atomic_write_bytes(target, f.read())
        atomic_write_bytes(sidecar_path(target), json.dumps(meta, indent=2).encode())
        return target


def load_vocab(path_or_dir: str) -> Vocabulary:
    """Load a vocabulary from a `.model` file or a directory holding exactly one (see save_to).

    A Hugging Face `tokenizer.json` (a `.json` path, or a directory holding one and no `.model`)
    loads with the `tokenizers` backend, common/hf_vocab.py.
    """
    path = path_or_dir
    if path.endswith(".json") or (
            os.path.isdir(path) and not glob.glob(os.path.join(path, "*.model"))
            and os.path.isfile(os.path.join(path, "tokenizer.json"))):
        from common.hf_vocab import TokenizersVocab  # pylint: disable=g-import-not-at-top
        return TokenizersVocab.load(path)
    if os.path.isdir(path):
        models = sorted(glob.glob(os.path.join(path, "*.model")))
        if len(models) != 1:
            raise FileNotFoundError(f"expected exactly one *.model in '{path}', found "
                                    f"{[os.path.basename(m) for m in models]}")
        path = models[0]
    extra_ids, backend = 0, "sentencepiece"
    if os.path.isfile(sidecar_path(path)):
        with open(sidecar_path(path)) as f:
            meta = json.load(f)
        extra_ids, backend = int(meta.get("extra_ids", 0)), meta.get("backend", backend)
    if backend == "sentencepiece_nobos":  # a Hugging Face T5 spiece.model (common/hf_vocab.py)
        from common.hf_vocab import NoBosSentencePieceVocab  # pylint: disable=g-import-not-at-top
        return NoBosSentencePieceVocab(path, extra_ids=extra_ids)
    return SentencePieceVocab(path, extra_ids=extra_ids)

