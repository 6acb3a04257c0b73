"""vLLM's offline-inference examples, as vLLM documents them, run with only the import line changed.

The models they name (facebook/opt-125m, meta-llama/Meta-Llama-3-8B-Instruct) are served from a Hugging Face
cache in a temporary directory (HF_HUB_CACHE, the models--org--name/snapshots/<rev> layout with refs/main)
that holds a tiny random Mixtral with a tokenizer and a chat template under those ids; the examples then
plan for "this machine" (a relabelled profile) and run the batched engine, as `LLM(model=...)` does.
"""

from __future__ import annotations

import textwrap

import pytest

from planner.specs.spec import ModelSpec
from runtime.checkpoint.writer import write_random_checkpoint

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TINY = ModelSpec(
    name="tiny-mixtral",
    family="mixtral",
    num_layers=2,
    hidden_size=128,
    num_heads=2,
    num_kv_heads=1,
    head_dim=64,
    vocab_size=512,
    num_experts=4,
    top_k=2,
    moe_intermediate_size=32,
    max_position_embeddings=256,
)
REVISION = "0123456789abcdef0123456789abcdef01234567"

GENERATE = """
from vllm import LLM, SamplingParams

# Sample prompts.
prompts = [
    "Hello, my name is",
    "The president of the United States is",
    "The capital of France is",
    "The future of AI is",
]
# Create a sampling params object.
sampling_params = SamplingParams(temperature=0.8, top_p=0.95)

# Create an LLM.
llm = LLM(model="facebook/opt-125m")
# Generate texts from the prompts. The output is a list of RequestOutput objects
# that contain the prompt, generated text, and other information.
outputs = llm.generate(prompts, sampling_params)
# Print the outputs.
for output in outputs:
    prompt = output.prompt
    generated_text = output.outputs[0].text
    print(f"Prompt: {prompt!r}, Generated text: {generated_text!r}")
"""

CHAT = """
from vllm import LLM, SamplingParams

llm = LLM(model="meta-llama/Meta-Llama-3-8B-Instruct")
sampling_params = SamplingParams(temperature=0.5)


def print_outputs(outputs):
    for output in outputs:
        prompt = output.prompt
        generated_text = output.outputs[0].text
        print(f"Prompt: {prompt!r}, Generated text: {generated_text!r}")
    print("-" * 80)


conversation = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hello! How can I assist you today?"},
    {"role": "user", "content": "Write an essay about the importance of higher education."},
]
outputs = llm.chat(conversation, sampling_params=sampling_params, use_tqdm=False)
print_outputs(outputs)

conversations = [conversation for _ in range(10)]
outputs = llm.chat(messages=conversations, sampling_params=sampling_params, use_tqdm=True)
print_outputs(outputs)
"""

TOKEN_IDS = """
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

llm = LLM(model="facebook/opt-125m")
sampling_params = SamplingParams(temperature=0, max_tokens=8)
prompt_token_ids = [[0, 414, 232, 328, 240], [0, 209, 16, 10, 34]]
outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_ids], sampling_params)
for output in outputs:
    print(output.prompt_token_ids, output.outputs[0].token_ids, output.outputs[0].finish_reason)
"""

IMPORTS = {
    "from vllm import LLM, SamplingParams": "from runtime import LLM, SamplingParams",
    "from vllm.inputs import TokensPrompt": "from runtime import TokensPrompt",
}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, machine_profiles_dir):
    cache = tmp_path_factory.mktemp("hf-hub")
    for repo_id in ("facebook/opt-125m", "meta-llama/Meta-Llama-3-8B-Instruct"):
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        write_random_checkpoint(TINY, repo / "snapshots" / REVISION, dtype="fp32", seed=1)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(REVISION)
    return cache


def run_example(code: str, hub_cache, machine_profiles_dir, monkeypatch, capsys) -> str:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("MOELENS_PROFILES_DIR", str(machine_profiles_dir))
    changed = textwrap.dedent(code)
    for theirs, ours in IMPORTS.items():
        changed = changed.replace(theirs, ours)
    assert [line for line in changed.splitlines() if line.strip() and line not in code.splitlines()] == [
        ours for theirs, ours in IMPORTS.items() if theirs in code
    ]  # only import lines changed
    exec(compile(changed, "<vllm example>", "exec"), {"__name__": "__example__"})
    return capsys.readouterr().out


def test_generate_with_sampling(hub_cache, machine_profiles_dir, monkeypatch, capsys):
    out = run_example(GENERATE, hub_cache, machine_profiles_dir, monkeypatch, capsys)
    lines = out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("Prompt: 'Hello, my name is', Generated text: ")


def test_chat(hub_cache, machine_profiles_dir, monkeypatch, capsys):
    out = run_example(CHAT, hub_cache, machine_profiles_dir, monkeypatch, capsys)
    prompts = [line for line in out.splitlines() if line.startswith("Prompt: ")]
    assert len(prompts) == 11 and "higher education" in prompts[0]


def test_token_id_prompts(hub_cache, machine_profiles_dir, monkeypatch, capsys):
    out = run_example(TOKEN_IDS, hub_cache, machine_profiles_dir, monkeypatch, capsys)
    lines = out.strip().splitlines()
    assert (
        len(lines) == 2 and lines[0].startswith("[0, 414, 232, 328, 240] [") and lines[0].endswith("length")
    )


def test_llm_uses_the_batched_engine_and_resolves_the_hub_id(hub_cache, machine_profiles_dir, monkeypatch):
    from runtime import LLM
    from runtime.engine import EngineBackend

    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("MOELENS_PROFILES_DIR", str(machine_profiles_dir))
    llm = LLM(model="facebook/opt-125m")
    assert isinstance(llm.backend, EngineBackend)
    assert llm.checkpoint.dir.name == REVISION
    assert llm.plan.decisions.num_seqs > 1
