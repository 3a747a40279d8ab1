"""Untrusted workflow inputs in the library and the nodes' shared checks: paths, seeds, names, numbers, temp files."""

import os
import sys
import time
import types

import pytest
import torch

from srrl_core.rewards.chat_client import redact
from srrl_core.rewards.files import check_safetensors, load_state_dict
from srrl_core.safe_paths import UnsafePath, resolve_in_folders
from srrl_core.sampling.noise import BranchNoise, wrap_seed
from srrl_core.training import check_lora_name
from srrl_core.training.export import TEMP_SUFFIX, remove_stale_temp_files, save_safetensors_atomic
from srrl_core.training.lora import add_lora, load_lora_state_dict, lora_state_dict
from tests.helpers.support import load_pack

_nodes = load_pack("srrl_pack_security_tests").nodes
inputs, lora_trainer = _nodes.inputs, _nodes.lora_trainer


def test_names_resolve_only_inside_their_folders(tmp_path):
    folder, outside = tmp_path / "input", tmp_path / "secret.txt"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "prompts.txt").write_text("a cat\n")
    outside.write_text("root:x:0:0\n")
    os.symlink(outside, folder / "link.txt")
    os.symlink(tmp_path, folder / "dirlink")
    assert resolve_in_folders("sub/prompts.txt", [str(folder)], "prompts_file") == str(folder / "sub" / "prompts.txt")
    for hostile in (str(outside), "../secret.txt", "sub/../../secret.txt", "~/secret.txt", "C:\\x.txt", "a\0b", ""):
        with pytest.raises(UnsafePath, match="prompts_file"):
            resolve_in_folders(hostile, [str(folder)], "prompts_file")
    for linked in ("link.txt", "dirlink/secret.txt"):
        with pytest.raises(UnsafePath, match="prompts_file: .* is a link that points outside its folder"):
            resolve_in_folders(linked, [str(folder)], "prompts_file")
    with pytest.raises(FileNotFoundError, match="prompts_file: file 'gone.txt' not found"):
        resolve_in_folders("gone.txt", [str(folder)], "prompts_file")
    # a folder that is itself a link (models on another disk) is fine: containment is checked after resolving it
    os.symlink(folder, tmp_path / "linked_input")
    assert resolve_in_folders("sub/prompts.txt", [str(tmp_path / "linked_input")], "x").endswith("prompts.txt")


def test_seeds_wrap_modulo_2_64_and_keep_smaller_seeds():
    assert wrap_seed(2**64 - 1 + 1) == 0 and wrap_seed(2**64 + 5) == 5 and wrap_seed(12345) == 12345
    wrapped = BranchNoise.for_batch(2**64 - 1, 2)
    assert wrapped.seeds == [2**64 - 1, 0]
    x = torch.zeros(2, 3)
    reference = torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(s)) for s in (2**64 - 1, 0)])
    assert torch.equal(wrapped.randn_like(x), reference)
    small = BranchNoise.for_batch(2**62, 2)  # seeds below 2**63 give exactly the numbers they always gave
    expected = torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(2**62 + i)) for i in range(2)])
    assert torch.equal(small.randn_like(x), expected)


def test_lora_name_with_extension_is_the_same_name():
    assert check_lora_name("x.safetensors") == "x" and check_lora_name("my.lora-v2") == "my.lora-v2"
    for bad in ("../x", "/abs", ".hidden", "a/b", "x" * 200, ".safetensors"):
        with pytest.raises(ValueError, match="lora_name must be"):
            check_lora_name(bad)


def test_resume_with_another_rank_names_the_setting():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8))
    add_lora(net, rank=4, targets=("0",))
    saved = lora_state_dict(net)
    other = torch.nn.Sequential(torch.nn.Linear(8, 8))
    add_lora(other, rank=8, targets=("0",))
    with pytest.raises(ValueError, match="lora_rank changed: the saved LoRA has rank 4, this run asks for lora_rank 8"):
        load_lora_state_dict(other, saved)


def test_atomic_writes_leave_no_listed_file_and_stale_ones_are_removed(tmp_path):
    save_safetensors_atomic({"w": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    assert os.listdir(tmp_path) == ["a.safetensors"]
    old = [tmp_path / ".tmp-k1.safetensors", tmp_path / f".tmp-k2{TEMP_SUFFIX}"]
    fresh = tmp_path / f".tmp-k3{TEMP_SUFFIX}"
    for path in old + [fresh]:
        path.write_bytes(b"")
    stale = time.time() - 3600
    for path in old:
        os.utime(path, (stale, stale))
    assert sorted(remove_stale_temp_files(str(tmp_path))) == sorted(str(p) for p in old)
    assert sorted(os.listdir(tmp_path)) == sorted([fresh.name, "a.safetensors"])  # a live write is left alone


def test_broken_and_pickled_weights_name_the_file(tmp_path):
    empty, garbage = tmp_path / "empty.safetensors", tmp_path / "garbage.safetensors"
    empty.write_bytes(b"")
    garbage.write_bytes(b"\x00" * 7 + b"\x7f" + b"junk")
    with pytest.raises(ValueError, match="'empty.safetensors' is empty or truncated"):
        load_state_dict(str(empty))
    with pytest.raises(ValueError, match="'garbage.safetensors' .* is not a readable .safetensors file"):
        check_safetensors(str(garbage), "weights")

    class Code:  # a pickle that would run code: refused without torch's "weights_only=False" advice
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"w": Code()}, str(tmp_path / "evil.pt"))
    with pytest.raises(ValueError, match="could not read 'evil.pt' as plain tensors") as error:
        load_state_dict(str(tmp_path / "evil.pt"))
    assert "weights_only=False" not in str(error.value)


def test_key_like_text_is_masked():
    text = redact("Authorization: Bearer abc.def sk-proj-1234567890 hf_ABCDEFGHIJ my-own-secret", "my-own-secret")
    assert "abc.def" not in text and "sk-proj" not in text and "hf_ABC" not in text and "my-own-secret" not in text


class Node:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"cfg": ("FLOAT", {"min": 0.0, "max": 100.0}), "steps": ("INT", {"min": 1, "max": 10}),
                             "name": ("STRING", {})},
                "optional": {"stop_at": ("FLOAT", {"min": -1e6, "max": 1e6})}}


@pytest.mark.parametrize("values, message", [
    ({"cfg": float("nan")}, "cfg must be a finite number in"),
    ({"cfg": float("inf")}, "cfg must be a finite number in"),
    ({"cfg": 101.0}, r"cfg must be a finite number in \[0.0, 100.0\], got 101.0"),
    ({"stop_at": float("nan")}, "stop_at must be a finite number"),
    ({"steps": 0}, r"steps must be in \[1, 10\]"),
])
def test_node_widgets_are_checked_by_their_declared_ranges(values, message):
    with pytest.raises(ValueError, match=message):
        inputs.check_widgets(Node, {"cfg": 1.0, "steps": 2, "name": "x", **values})
    inputs.check_widgets(Node, {"cfg": 1.0, "steps": 2, "name": "x", "stop_at": None})


def test_prompts_file_is_read_only_from_the_input_folder(tmp_path, monkeypatch):
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "ok.txt").write_text("a red cube\n\n a blue sphere \n", encoding="utf-8")
    (folder / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (folder / "notes.md").write_text("x\n")
    (tmp_path / "secret.txt").write_text("root:x:0:0\n")
    fake = types.ModuleType("folder_paths")
    fake.get_input_directory = lambda: str(folder)
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    assert lora_trainer._read_prompts("a cat", "ok.txt") == ["a cat", "a red cube", "a blue sphere"]
    for hostile in (str(tmp_path / "secret.txt"), "../secret.txt"):
        with pytest.raises(ValueError, match="prompts_file: .* is not allowed"):
            lora_trainer._read_prompts("", hostile)
    with pytest.raises(ValueError, match="prompts_file: 'latin1.txt' is not UTF-8 text"):
        lora_trainer._read_prompts("", "latin1.txt")
    with pytest.raises(ValueError, match="prompts_file: expected a .txt file"):
        lora_trainer._read_prompts("", "notes.md")
    with pytest.raises(ValueError, match="prompts_file: 'gone.txt' is not a file in the input folder"):
        lora_trainer._read_prompts("", "gone.txt")
