"""The real all-MiniLM-L6-v2: merge two differently perturbed copies and use the result."""

import shutil

import pytest
import torch
from conftest import read_folder_tensors

import cocktail


def _perturbed_copy(source, dest, seed):
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, dest)
    tensors = load_file(str(source / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    for name, t in tensors.items():
        if t.is_floating_point():
            tensors[name] = t + 0.02 * t.std() * torch.randn(t.shape, generator=g)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


@pytest.fixture(scope="module")
def variants(minilm_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("minilm")
    return _perturbed_copy(minilm_path, root / "a", 1), _perturbed_copy(minilm_path, root / "b", 2)


def _embed(folder, sentences):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(sentences, convert_to_tensor=True)


SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "A man is riding a horse.", "Two men pushed carts through the woods."]


def test_merged_minilm_weights_and_embeddings(variants, tmp_path):
    a, b = variants
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "merged")
    merged, ta, tb = (read_folder_tensors(p) for p in (tmp_path / "merged", a, b))
    for name in ta:
        if ta[name].is_floating_point():
            assert torch.equal(merged[name], (ta[name] * 0.5 + tb[name] * 0.5)), name
        else:
            assert torch.equal(merged[name], ta[name]), name
    ea, eb, em = (_embed(p, SENTENCES) for p in (a, b, tmp_path / "merged"))
    # the merge of two nearby models embeds like both of them, and is neither of them
    for parent in (ea, eb):
        cos = torch.nn.functional.cosine_similarity(em, parent)
        assert cos.min() > 0.99
        assert not torch.allclose(em, parent, atol=1e-6)
    # and it keeps the model's meaning: similar sentences stay the closest pair
    sims = em @ em.T
    sims.fill_diagonal_(-1)
    assert int(sims[0].argmax()) == 1


def test_weight_one_reproduces_the_embeddings_exactly(variants, tmp_path):
    a, b = variants
    cocktail.merge([a, b], [1.0, 0.0], tmp_path / "merged")
    assert torch.equal(_embed(tmp_path / "merged", SENTENCES), _embed(a, SENTENCES))
