"""Long texts (issue 20, item 5): a line of a data or examples file over 1 MiB is refused as soon as
that much of it is read, and a long text is cut before it is tokenized, which changes no token the
tokenizer would have kept, while the memory a huge text takes stays small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_bert, save_decoder_tokenizer, save_xlmr_tokenizer

from cocktail.errors import InputError
from cocktail.evaluation.datasets import load_dataset
from cocktail.io.text_lines import MAX_LINE_CHARS
from cocktail.modeling.text_cut import CHARS_PER_TOKEN, cut
from hostile.conftest import refuse

HUGE = 48 * MAX_LINE_CHARS  # 48 MiB: reading it whole would show in the memory traced


FIRST = {"query": "red car", "pos": ["car red"], "neg": ["blue sea"]}


def huge_line_file(path: Path, before: str, after: str, first: dict = FIRST) -> Path:
    """A file of ``first`` then a line of ``before`` + 48 MiB of ``x`` + ``after``, written a piece at a time."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(first) + "\n")
        f.write(before)
        piece = "x" * MAX_LINE_CHARS
        for _ in range(HUGE // MAX_LINE_CHARS):
            f.write(piece)
        f.write(after + "\n")
    return path


def test_an_eval_data_line_over_1_mib_is_refused_without_reading_it_whole(models, tmp_path):
    a, _ = models
    data = huge_line_file(tmp_path / "data.jsonl", '{"query": "the sun", "pos": ["', '"], "neg": ["cat dog"]}')
    result = refuse(["eval", "-m", a, "--data", data], inputs=[a, data], contains=f"{data}, line 2: longer than")
    assert "1 MiB" in result.line
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="line 2: longer than 1,048,576 characters"):
            load_dataset(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MAX_LINE_CHARS, f"reading the file took {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("name, before, after", [
    ("corpus", '{"_id": "d2", "text": "', '"}'),  # a BEIR folder's corpus
    ("sts", "a long sentence ", "\tshort one\t0.5"),  # STS pairs, read by the csv module
])
def test_other_data_files_bound_their_lines_too(models, tmp_path, name, before, after):
    a, _ = models
    if name == "corpus":
        folder = tmp_path / "beir"
        (folder / "qrels").mkdir(parents=True)
        huge_line_file(folder / "corpus.jsonl", before, after, first={"_id": "d1", "text": "red car"})
        (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "red car"}) + "\n")
        (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\n")
        data, bad = folder, folder / "corpus.jsonl"
    else:
        data = bad = tmp_path / "pairs.tsv"
        bad.write_text("sentence1\tsentence2\tscore\n")
        with open(bad, "a") as f:
            f.write(before + "y" * (MAX_LINE_CHARS + 1) + after + "\n")
    refuse(["eval", "-m", a, "--data", data], inputs=[a, data], contains=f"{bad}, line 2: longer than")


def test_an_examples_line_over_1_mib_is_refused(models, tmp_path):
    a, b = models
    examples = huge_line_file(tmp_path / "few.jsonl", '{"query": "the sun", "pos": ["', '"], "neg": ["cat dog"]}')
    out = tmp_path / "out"
    refuse(["merge", "--models", a, b, "--examples", examples, "-o", out], inputs=[a, b, examples], outputs=[out],
           contains=f"{examples}, line 2: longer than")


def test_a_line_of_exactly_1_mib_is_read(tmp_path):
    data = tmp_path / "data.jsonl"
    text = "sun " * (MAX_LINE_CHARS // 4)
    record = json.dumps({"query": "q", "pos": ["p"], "neg": []})
    line = record[:-1] + ', "x": "' + text[:MAX_LINE_CHARS - len(record) - 9] + '"}'
    assert len(line) == MAX_LINE_CHARS
    data.write_text(json.dumps({"query": "red car", "pos": ["car red"], "neg": ["sea"]}) + "\r\n" + line + "\r\n")
    assert len(load_dataset(data).qrels) == 2


# -- the cut -------------------------------------------------------------------------------------


def long_texts() -> dict[str, str]:
    """Real prose and code (this README), CJK, and text full of line ends and spaces: each far longer
    than the cut, so the cut falls inside it."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    cjk = "模型合并是一种把多个微调模型的参数加权平均的方法，它能保留通用能力。" * 2000
    return {"readme": readme * 3, "cjk": cjk, "mixed": (readme[:3000] + cjk[:3000] + "\n\n    \t") * 40}


def tokenizers(tmp_path: Path, minilm_path: Path) -> dict:
    from transformers import AutoTokenizer

    save_xlmr_tokenizer(tmp_path / "xlmr")
    save_decoder_tokenizer(tmp_path / "bpe")
    return {"wordpiece": AutoTokenizer.from_pretrained(str(minilm_path)),
            "unigram": AutoTokenizer.from_pretrained(str(tmp_path / "xlmr")),
            "byte-bpe": AutoTokenizer.from_pretrained(str(tmp_path / "bpe"))}


def test_the_cut_keeps_every_token_the_tokenizer_keeps(tmp_path, minilm_path):
    for tokenizer_name, tokenizer in tokenizers(tmp_path, minilm_path).items():
        for text_name, text in long_texts().items():
            for max_length in (8, 64, 512):
                assert len(text) > max_length * CHARS_PER_TOKEN
                whole = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
                if (tokenizer_name, text_name) != ("unigram", "cjk"):  # the tiny unigram's one <unk> for all CJK
                    assert len(whole) == max_length, (tokenizer_name, text_name)  # the tokenizer cuts the text
                assert tokenizer(cut(text, max_length), truncation=True, max_length=max_length)["input_ids"] == whole, \
                    (tokenizer_name, text_name, max_length)


def test_a_long_text_embeds_as_its_tokens_would(minilm_path):
    """The embedding of a long text is the model's output on the text tokenized whole and truncated."""
    from cocktail.modeling.encoder import Encoder

    text = long_texts()["readme"]
    encoder = Encoder.open(str(minilm_path), device="cpu", max_length=128)
    batch = encoder.tokenizer([text], truncation=True, max_length=encoder.max_length, return_tensors="pt")
    with torch.inference_mode():
        hidden = encoder.model(**batch).last_hidden_state
        expected = torch.nn.functional.normalize(encoder.pooling(hidden, batch["attention_mask"]).float(), dim=-1)
    assert torch.allclose(encoder.encode([text, "a short one"])[0], expected[0], atol=1e-5)


MEASURE = """
import resource, sys
from cocktail.modeling.encoder import Encoder
encoder = Encoder.open(sys.argv[1], device="cpu")
encoder.encode(["warm up"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
text = "sun moon star " * (16 * 2**20 // 14)
encoder.encode([text, text[::-1]])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_16_mib_text_takes_memory_of_its_own_size_not_a_hundred_times(tmp_path):
    """The issue's 16 MiB line peaked at 1.55 GB: the tokenizer read it whole. Cut first, it takes
    about what the text itself takes (two texts of 16 MiB, one reversed: 32 MiB, and a copy or two)."""
    model = make_bert(tmp_path / "m")
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(model)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    grown_mib = int(proc.stdout.strip().splitlines()[-1])
    assert grown_mib < 200, f"encoding two 16 MiB texts took {grown_mib} MiB more"
