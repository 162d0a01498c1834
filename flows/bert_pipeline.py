"""An offline example pipeline in the spirit of Runhouse's BERT tutorial (preprocess, then fine-tune), data-aware.

1. ``preprocess`` builds a tokenized dataset Table *on a cluster* (whitespace tokenizer, a vocabulary built from
   the corpus, ``[CLS] ... [SEP]`` ids padded to ``max_len``) and saves it by name, so a laptop can stream it.
   Each run writes a new version of the table.
2. ``fine_tune`` reads exactly one version of that table (the one it is given, else the current one), builds the
   training batches in a task cached on the table's version (``rh.DATA_VERSIONS``: the same version is not read
   twice), trains a small bag-of-words logistic-regression "model" (numpy), saves the checkpoint as a Blob on the
   cluster and sends it to S3 - from the cluster, when a worker serves the cluster's work queue, so the checkpoint
   never passes through the laptop. It records the table version it read: returned, logged, inside the checkpoint,
   and in the checkpoint's lineage (``rh.lineage("bert-ft-ckpt")`` names the table version and the flow run).
3. ``watch(cluster)`` makes each new version of the table start ``fine_tune``: an ``rh.on_update`` automation
   that runs the deployment ``rh-bert-fine-tune/rh-gpu`` (deployments/prefect.yaml) with the table, by
   reference, and the new version id.

No model or dataset downloads: the corpus is built in and the tokenizer splits on whitespace.

Run it against any Prefect server (deploy it on a cluster's queue with deployments/prefect.yaml, or call it)::

    import rh_prefect as rh
    from flows.bert_pipeline import preprocess, fine_tune, watch
    c = rh.cluster("rh-gpu")
    preprocess(cluster=c)                                   # the Table "@/bert_preproc" on the cluster
    for batch in rh.table(name="@/bert_preproc").stream(batch_size=8):   # streamed from the laptop
        print(batch["input_ids"][:1])
    fine_tune(cluster=c, s3_path="/my-bucket/models/bert-ft.pkl")        # by hand: the current version
    watch(c, s3_path="/my-bucket/models/bert-ft.pkl")      # from now on: each new version starts a fine-tune run
    preprocess(cluster=c, max_len=12)                       # -> one run of rh-bert-fine-tune/rh-gpu on it
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE

import rh_prefect as rh
from rh_prefect.errors import InvalidArgument
from rh_prefect.resources.cluster import Cluster
from rh_prefect.systems import S3Credentials, get_system

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL = [PAD, UNK, CLS, SEP]

#: A tiny built-in review corpus: (text, label) with 1 = positive.
CORPUS: list[tuple[str, int]] = [
    ("the food was great and the staff were friendly", 1),
    ("terrible service and cold food", 0),
    ("i loved the pasta , great value", 1),
    ("awful experience , never coming back", 0),
    ("friendly staff and a lovely quiet room", 1),
    ("the room was dirty and the staff rude", 0),
    ("great location , great breakfast", 1),
    ("cold coffee and a rude waiter", 0),
    ("lovely evening , the dessert was amazing", 1),
    ("overpriced and bland , a terrible meal", 0),
    ("amazing view and friendly people", 1),
    ("the worst pizza i have ever had", 0),
    ("quiet , clean and great value", 1),
    ("noisy room and awful breakfast", 0),
    ("we loved it and will come back", 1),
    ("bland food , rude staff , dirty tables", 0),
]


def tokenize(text: str) -> list[str]:
    """Lower-case whitespace tokenization (punctuation separated by spaces stays a token)."""
    return re.sub(r"\s+", " ", text.lower()).strip().split(" ")


def build_vocab(texts: list[str]) -> dict[str, int]:
    """Special tokens first, then words by descending frequency (ties alphabetical): deterministic ids."""
    counts = Counter(tok for text in texts for tok in tokenize(text))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    return {tok: i for i, tok in enumerate(SPECIAL + words)}


def encode(text: str, vocab: dict[str, int], max_len: int) -> tuple[list[int], list[int]]:
    """``[CLS] tokens [SEP]`` ids truncated/padded to ``max_len``, and the attention mask."""
    ids = [vocab[CLS]] + [vocab.get(t, vocab[UNK]) for t in tokenize(text)][: max_len - 2] + [vocab[SEP]]
    mask = [1] * len(ids) + [0] * (max_len - len(ids))
    return ids + [vocab[PAD]] * (max_len - len(ids)), mask


def tokenized_frame(corpus: list[tuple[str, int]] = CORPUS, max_len: int = 16) -> tuple[pd.DataFrame, dict[str, int]]:
    """The tokenized dataset as a DataFrame (text, label, input_ids, attention_mask) and its vocabulary."""
    vocab = build_vocab([text for text, _ in corpus])
    rows = []
    for text, label in corpus:
        ids, mask = encode(text, vocab, max_len)
        rows.append({"text": text, "label": label, "input_ids": ids, "attention_mask": mask})
    return pd.DataFrame(rows), vocab


@flow(name="rh-bert-preprocess", description="Tokenize the corpus into a Table on a cluster and save it by name.")
def preprocess(cluster: Cluster, name: str = "@/bert_preproc", path: str = "rh-data/bert_preproc",
               max_len: int = 16) -> dict[str, Any]:
    """Build the tokenized Table on ``cluster`` at ``path`` and save it as ``name`` (again: a new version of it,
    which starts the fine-tune run :func:`watch` set up); returns its summary with the new version."""
    df, vocab = tokenized_frame(max_len=max_len)
    table = rh.table(data=df, name=name, path=path, system=cluster,
                     metadata={"tokenizer": "whitespace", "vocab_size": len(vocab), "max_len": max_len})
    table.save(overwrite=True)  # a re-run replaces the saved entry with the new version; older versions are kept
    get_run_logger().info("tokenized %d rows (vocabulary %d) into %s, version %s", len(df), len(vocab), table.url,
                          table.version)
    return {"name": name, "url": table.url, "rows": len(df), "vocab_size": len(vocab), "version": table.version}


@task(name="rh-bert-train", cache_policy=NO_CACHE)
def _train(batches: list[tuple[np.ndarray, np.ndarray]], vocab_size: int, epochs: int,
           lr: float) -> tuple[np.ndarray, float]:
    """Logistic regression by mini-batch gradient descent, batches in the streamed (seeded) order."""
    weights, bias = np.zeros(vocab_size), 0.0
    for _ in range(epochs):
        for x, y in batches:
            p = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
            grad = p - y
            weights = weights - lr * (x.T @ grad) / len(y)
            bias = bias - lr * float(grad.mean())
    return weights, bias


def _bag_of_words(input_ids: Any, vocab_size: int) -> np.ndarray:
    x = np.zeros((len(input_ids), vocab_size))
    for row, ids in enumerate(input_ids):
        for i in ids:
            if i >= len(SPECIAL):  # skip padding and markers
                x[row, i] += 1.0
    return x


# Keyed on the table's version (rh.DATA_VERSIONS) and the other inputs: a run on a version already batched is
# served from the cache, a new version is read. The table's block fields are left out of INPUTS (they hold the
# cluster's settings, not the data).
@task(name="rh-bert-batches", cache_policy=rh.DATA_VERSIONS + INPUTS - "table")
def _batches(table: rh.Table, vocab_size: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The training batches of one table version: bag-of-words features and labels, in a seeded order."""
    return [(_bag_of_words(b["input_ids"], vocab_size), np.asarray(b["label"], dtype=float))
            for b in table.stream(batch_size=batch_size, shuffle_seed=0, batch_format="dict")]


@flow(name="rh-bert-fine-tune", description="Train on one version of the preprocessed Table, save a checkpoint "
                                            "Blob that records it, send it to S3.")
def fine_tune(cluster: Cluster, table: Optional[rh.Table] = None, version: Optional[str] = None,
              table_name: str = "@/bert_preproc", ckpt_name: str = "bert-ft-ckpt",
              ckpt_path: str = "rh-data/bert-ft-ckpt.pkl", s3_path: Optional[str] = None,
              credentials: Optional[S3Credentials] = None, epochs: int = 30, batch_size: int = 4,
              lr: float = 0.5) -> dict[str, Any]:
    """Read one version of the preprocessed table, fit the model, save the checkpoint Blob ``ckpt_name`` on
    ``cluster`` and, with ``s3_path``, copy it to S3 (on the cluster's worker when one serves its queue).

    The table is ``table`` (a Table block: what the :func:`watch` automation passes, by reference) or the one saved
    as ``table_name``; ``version`` pins the version read (the automation passes the one that fired), else the
    table's current one. The version read is returned (``table_version``), logged, stored in the checkpoint, and
    named in the checkpoint's lineage: ``rh.lineage(ckpt_name)`` shows it as the ``input`` of this flow run's write.
    """
    logger = get_run_logger()
    if table is None or version:
        if table is not None and not table.full_name:
            raise InvalidArgument("fine_tune(version=...) reads a version of a saved table: pass the table by its "
                                  "name (table_name=...) or a saved Table.")
        source = table.full_name if table is not None else table_name
        table = rh.table(name=source, version=version)  # exactly that version, also after newer writes
    name, read = table.full_name or table.url, table.version
    logger.info("training on table %s at version %s", name, read)
    vocab_size = int(table.metadata["vocab_size"])
    batches = _batches(table, vocab_size, batch_size)
    weights, bias = _train(batches, vocab_size, epochs, lr)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    accuracy = float((((x @ weights + bias) > 0).astype(float) == y).mean())
    ckpt = {"weights": weights, "bias": bias, "vocab_size": vocab_size, "epochs": epochs, "accuracy": accuracy,
            "table": name, "table_version": read}
    blob = rh.blob(ckpt, name=ckpt_name, path=ckpt_path, system=cluster)
    blob.save(overwrite=True)  # each run: a new version of the checkpoint under the same name
    logger.info("checkpoint %s version %s from table %s @ %s (train accuracy %.2f)", blob.url, blob.version, name,
                read, accuracy)
    out: dict[str, Any] = {"accuracy": accuracy, "checkpoint": blob.url, "checkpoint_version": blob.version,
                           "table": name, "table_version": read}
    if s3_path:
        s3 = blob.to(get_system("s3", credentials=credentials), s3_path)
        out["s3"] = s3.url
        logger.info("checkpoint sent to %s", s3.url)
    return out


def watch(cluster: Union[str, Cluster], deployment: str = "rh-bert-fine-tune/rh-gpu",
          table_name: str = "@/bert_preproc", **parameters: Any) -> Any:
    """Make each new version of the preprocessed table start a fine-tune run: an ``rh.on_update`` automation
    that runs ``deployment`` (the :func:`fine_tune` flow, registered by deployments/prefect.yaml) with the table by
    reference, the new version id, ``cluster`` (a saved Cluster or its name, passed by reference) and any other
    ``fine_tune`` parameters (``s3_path=...``, ``epochs=...``). Idempotent; returns the Prefect Automation
    (``.delete()`` stops it). The table must be saved already (run :func:`preprocess` once).

    Example:
        ```python
        auto = watch("rh-gpu", s3_path="/my-bucket/models/bert-ft.pkl")
        preprocess(cluster=rh.cluster("rh-gpu"), max_len=12)   # a new version -> one fine-tune run
        auto.delete()
        ```
    """
    if isinstance(cluster, str):
        cluster = rh.cluster(cluster)
    return rh.on_update(table_name, deployment=deployment, parameters={"cluster": cluster, **parameters})


__all__ = ["CORPUS", "build_vocab", "encode", "fine_tune", "preprocess", "tokenize", "tokenized_frame", "watch"]
