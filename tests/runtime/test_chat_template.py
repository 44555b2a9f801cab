"""Chat templates found and rendered as transformers does: the bundled SmolLM2, and the real
templates of five families (tests/data/chat_templates: the models' Hub templates as llama.cpp's
models/templates holds them, at c392e50) on tokenizer folders built from SmolLM2's
tokenizer.json, against AutoTokenizer on the same folder (text and token ids); every place
transformers keeps a template; a folder written by save_pretrained chatting out of the box."""

import json
from pathlib import Path

import pytest
import torch

import pyruntime
from pyruntime import models
from pyruntime.convert import convert_gguf
from pyruntime.tokenizer import Tokenizer
from tests.conftest import MODEL

transformers = pytest.importorskip("transformers")
jinja2 = pytest.importorskip("jinja2")

TEMPLATES = Path(__file__).parent.parent / "data" / "chat_templates"

# family -> (template file, special tokens to add, tokenizer_config tokens, token the post-processor
# prepends as the family's tokenizer does (the template writes it too: encoding must not double it))
FAMILIES = {
    "llama-3.1": ("meta-llama-Llama-3.1-8B-Instruct.jinja",
                  ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                   "<|eom_id|>", "<|python_tag|>"],
                  {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, "<|begin_of_text|>"),
    "qwen2.5": ("Qwen-Qwen2.5-7B-Instruct.jinja", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
                {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, None),
    "gemma-2": ("google-gemma-2-2b-it.jinja", ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}, "<bos>"),
    "phi-3.5": ("microsoft-Phi-3.5-mini-instruct.jinja",
                ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
                {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>"},
                None),
    "mistral-nemo": ("mistralai-Mistral-Nemo-Instruct-2407.jinja",
                     ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                      "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]"],
                     {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, "<s>"),
}
NOT_SPECIAL = {"qwen2.5": ["<tool_call>", "</tool_call>"]}  # added tokens, but plain text to decode

SYSTEM = {"role": "system", "content": "You are terse.  "}
CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is 2 + 2?"}],
    "system": [SYSTEM, {"role": "user", "content": "Name a colour.\n"}],
    "multi-turn": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": " Hello. How can I help?"},
                   {"role": "user", "content": "Tell me a joke about ünïcode ✓ 漢字."}],
    "system-multi-turn": [SYSTEM, {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
                          {"role": "user", "content": "Bye."}],
}
NO_SYSTEM_ROLE = {"gemma-2"}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city, in °C.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "call00001", "type": "function",
                     "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "call00001", "content": "{\"temperature\": 21}"},
]


@pytest.fixture(scope="module")
def smollm2_folder():
    return models.resolve(MODEL, progress=False)


def build_folder(folder: Path, base: Path, template=None, special=(), tokens=None, prepend=None, not_special=(),
                 extra_files=None) -> Path:
    """A tokenizer folder: SmolLM2's tokenizer.json with the family's tokens added, a
    tokenizer_config.json, the template as chat_template.jinja (as transformers 5 saves it)."""
    from tokenizers import AddedToken, processors
    from tokenizers import Tokenizer as HFTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = HFTokenizer.from_file(str(base / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in not_special])
    if prepend:
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{prepend}:0 $A:0", pair=f"{prepend}:0 $A:0 {prepend}:1 $B:1",
                                          special_tokens=[(prepend, tok.token_to_id(prepend))]),
        ])
    tok.save(str(folder / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **(tokens or {})}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False))
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    for name, text in (extra_files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def family_folder(folder: Path, base: Path, name: str) -> Path:
    file, special, tokens, prepend = FAMILIES[name]
    template = (TEMPLATES / file).read_text()
    return build_folder(folder, base, template, special, tokens, prepend, NOT_SPECIAL.get(name, ()))


def both(folder: Path):
    return Tokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory, smollm2_folder):
    """(name, pyruntime's Tokenizer, transformers' AutoTokenizer) of one family."""
    return request.param, *both(family_folder(tmp_path_factory.mktemp(request.param), smollm2_folder, request.param))


def hf_ids(hf, messages, **kwargs):
    out = hf.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def assert_same(ours, hf, messages, **kwargs):
    kwargs = {"add_generation_prompt": False, **kwargs}  # transformers' default (pyruntime's is True)
    want = hf.apply_chat_template(messages, tokenize=False, **kwargs)
    assert ours.apply_chat_template(messages, **kwargs) == want
    assert ours.apply_chat_template(messages, tokenize=True, **kwargs) == hf_ids(hf, messages, **kwargs)
    return want


# ---------------------------------------------------------------------------- families
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_family_matches_transformers(family, conversation, add_generation_prompt):
    name, ours, hf = family
    messages = CONVERSATIONS[conversation]
    if name in NO_SYSTEM_ROLE and conversation.startswith("system"):  # the template refuses one: both say so
        with pytest.raises(jinja2.TemplateError, match="System role not supported"):
            hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        with pytest.raises(ValueError, match="System role not supported"):
            ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return
    text = assert_same(ours, hf, messages, add_generation_prompt=add_generation_prompt)
    for m in messages:
        assert m["content"].strip() in text
    bos = ours.bos_token
    if bos and text.startswith(bos):  # the template writes BOS: encoding must not add another
        ids = ours.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        assert ids.count(ours.token_id(bos)) == 1


def test_family_special_tokens_match_transformers(family):
    _, ours, hf = family
    assert ours.special_tokens == hf.special_tokens_map


@pytest.mark.parametrize("name", ["qwen2.5", "llama-3.1", "mistral-nemo"])
def test_tools_match_transformers(tmp_path, smollm2_folder, name):
    ours, hf = both(family_folder(tmp_path, smollm2_folder, name))
    first = assert_same(ours, hf, TOOL_CHAT[:1], tools=[WEATHER], add_generation_prompt=True)
    assert "get_weather" in first and "°C" in first  # tojson(ensure_ascii=False)
    if name != "llama-3.1":  # Llama 3.1 puts the tools in the first user message, then needs another
        assert_same(ours, hf, TOOL_CHAT, tools=[WEATHER], add_generation_prompt=True)


def test_extra_template_kwargs_pass_through(tmp_path, smollm2_folder):
    ours, hf = both(family_folder(tmp_path, smollm2_folder, "llama-3.1"))
    text = assert_same(ours, hf, CONVERSATIONS["user"], add_generation_prompt=True, date_string="01 Jan 2030")
    assert "Today Date: 01 Jan 2030" in text


def test_gemma_system_role_raises(tmp_path, smollm2_folder):
    folder = family_folder(tmp_path, smollm2_folder, "gemma-2")
    messages = CONVERSATIONS["system"]
    with pytest.raises(jinja2.TemplateError, match="System role not supported"):
        transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(messages, tokenize=False)
    with pytest.raises(ValueError, match="System role not supported"):
        Tokenizer(folder).apply_chat_template(messages)
    bad_turns = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ValueError, match="Conversation roles must alternate"):
        Tokenizer(folder).apply_chat_template(bad_turns)


def test_continue_final_message_matches_transformers(family):
    _, ours, hf = family
    messages = CONVERSATIONS["multi-turn"] + [{"role": "assistant", "content": "Why did the"}]
    text = assert_same(ours, hf, messages, continue_final_message=True)
    assert text.endswith("Why did the")


# ---------------------------------------------------------------------------- the bundled model
def test_bundled_model_matches_transformers(llm, hf_tokenizer):
    for messages in CONVERSATIONS.values():
        for add in (True, False):
            assert_same(llm.tokenizer, hf_tokenizer, messages, add_generation_prompt=add)
    assert llm.tokenizer.chat_template == hf_tokenizer.chat_template


# ---------------------------------------------------------------------------- where templates live
SMOL = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}" \
       "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
OTHER = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
TOOLS = "{% for t in tools or [] %}{{ t | tojson }}\n{% endfor %}" + SMOL
LAYOUTS = {
    # layout -> (files, tokenizer_config's chat_template, the template transformers takes as default)
    "jinja": ({"chat_template.jinja": SMOL}, None, SMOL),
    "jinja-beats-config": ({"chat_template.jinja": SMOL}, OTHER, SMOL),
    "config-string": ({}, SMOL, SMOL),
    "config-list": ({}, [{"name": "default", "template": SMOL}, {"name": "tool_use", "template": TOOLS}], SMOL),
    "additional-dir": ({"chat_template.jinja": SMOL, "additional_chat_templates/tool_use.jinja": TOOLS}, OTHER, SMOL),
    "config-beats-processor-json": ({"chat_template.json": json.dumps({"chat_template": OTHER})}, SMOL, SMOL),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_template_found_where_transformers_finds_it(tmp_path, smollm2_folder, layout):
    files, in_config, default = LAYOUTS[layout]
    folder = build_folder(tmp_path, smollm2_folder, None, extra_files=files,
                          tokens={"eos_token": "<|im_end|>", **({"chat_template": in_config} if in_config else {})})
    ours, hf = both(folder)
    want = hf.chat_template if isinstance(hf.chat_template, dict) else {"default": hf.chat_template}
    assert ours.chat_templates == want
    assert ours.chat_template == default
    messages = CONVERSATIONS["system-multi-turn"]
    assert_same(ours, hf, messages, add_generation_prompt=True)
    if "tool_use" in ours.chat_templates:  # picked by name, and by default when tools are given
        assert_same(ours, hf, messages, chat_template="tool_use")
        text = assert_same(ours, hf, messages, tools=[WEATHER])
        assert text.startswith('{"type": "function"')


def test_processor_chat_template_json_is_the_last_resort(tmp_path, smollm2_folder):
    files = {"chat_template.json": json.dumps({"chat_template": SMOL})}
    folder = build_folder(tmp_path, smollm2_folder, None, extra_files=files)
    assert Tokenizer(folder).chat_template == SMOL


def test_named_template_errors(tmp_path, smollm2_folder):
    named = [{"name": "tool_use", "template": TOOLS}, {"name": "rag", "template": OTHER}]
    folder = build_folder(tmp_path, smollm2_folder, None, tokens={"chat_template": named})
    ours = Tokenizer(folder)
    messages = CONVERSATIONS["user"]
    with pytest.raises(ValueError, match="no default chat template.*rag, tool_use"):
        ours.apply_chat_template(messages)
    with pytest.raises(ValueError, match="no chat template named 'tool-use'"):
        ours.apply_chat_template(messages, chat_template="tool-use")
    assert ours.apply_chat_template(messages, chat_template="rag") == "[user] What is 2 + 2?\n"
    assert ours.apply_chat_template(messages, chat_template="{{ messages | length }}") == "1"
    none = build_folder(tmp_path / "none", smollm2_folder, None)
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer(none).apply_chat_template(messages)


# ---------------------------------------------------------------------------- the environment
ENV_CASES = {
    "tojson-args": "{{ x | tojson(indent=2, sort_keys=True, separators=(',', ': '), ensure_ascii=True) }}",
    "tojson-html": "{{ '<a href=\"&\">é</a>' | tojson }}",
    "special-tokens": "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{{ image_token }}",
    "loopcontrols": "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}",
    "trim-lstrip": "{% for m in messages %}\n    {% if m.role %}\n{{ m.role }}\n    {% endif %}\n{% endfor %}",
    "namespace-dict": "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}"
                      "{{ ns.n }}{{ dict(a=1) | tojson }}",
    "strftime": "{{ strftime_now('%Y') }}",
    "documents-none": "{{ documents is none }}{{ tools is none }}{{ add_generation_prompt }}",
    "reasoning-alias": "{{ messages[-1].reasoning_content }}|{{ messages[-1].thinking }}",
}


@pytest.mark.parametrize("case", sorted(ENV_CASES))
def test_environment_matches_transformers(tmp_path, smollm2_folder, case):
    tokens = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
              "pad_token": {"content": "<|endoftext|>", "__type": "AddedToken"}, "image_token": "<image>"}
    folder = build_folder(tmp_path, smollm2_folder, ENV_CASES[case], ["<image>"], tokens)
    ours, hf = both(folder)
    messages = [*CONVERSATIONS["multi-turn"][:2], {"role": "assistant", "content": "ok", "reasoning": "hmm"}]
    text = assert_same(ours, hf, messages, x={"b": [1, "ü"], "a": None})
    assert text


@pytest.mark.parametrize("template, message", [
    ("{{ raise_exception('no such luck') }}", "no such luck"),
    ("{% set ns = namespace(_x=1) %}", "underscore"),
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
    ("{{ messages.append(1) }}", "unsafe"),  # immutable: a template cannot edit what it is given
    ("{% for %}", "Expected"),
])
def test_template_errors_are_value_errors(tmp_path, smollm2_folder, template, message):
    folder = build_folder(tmp_path, smollm2_folder, template)
    with pytest.raises(ValueError, match=message):
        Tokenizer(folder).apply_chat_template(CONVERSATIONS["user"])


def test_bad_arguments(smollm2_folder):
    ours = Tokenizer(smollm2_folder)
    for messages in ([], "hi", [{"content": "no role"}]):
        with pytest.raises(ValueError, match="messages"):
            ours.apply_chat_template(messages)
    with pytest.raises(ValueError, match="tools"):
        ours.apply_chat_template(CONVERSATIONS["user"], tools=[len])
    with pytest.raises(ValueError, match="not compatible"):
        ours.apply_chat_template(CONVERSATIONS["user"], add_generation_prompt=True, continue_final_message=True)


def test_caller_messages_untouched(family):
    _, ours, _ = family
    messages = CONVERSATIONS["multi-turn"] + [{"role": "assistant", "content": "Why", "tool_calls": None}]
    before = json.dumps(messages)
    try:
        ours.apply_chat_template(messages, continue_final_message=True)
    except ValueError:
        pass
    assert json.dumps(messages) == before


# ---------------------------------------------------------------------------- GGUF
def test_gguf_named_templates_survive_convert(tmp_path):
    pytest.importorskip("sentencepiece")
    from tests.gguf_tiny import write_tiny_llama_gguf

    templates = [{"name": "default", "template": OTHER}, {"name": "tool_use", "template": TOOLS}]
    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", chat_template=templates)
    folder = convert_gguf(path, tmp_path / "tiny", progress=False)
    ours, hf = both(folder)
    assert ours.chat_templates == {"default": OTHER, "tool_use": TOOLS} == hf.chat_template
    assert_same(ours, hf, CONVERSATIONS["user"], chat_template="tool_use", tools=[WEATHER])


# ---------------------------------------------------------------------------- LLM.chat
def tiny_llama(folder: Path, vocab: int):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)


def prompt_of_chat(llm, messages, **kwargs):
    """The prompt token ids pyruntime's chat() ran the model on: what prefill received, after
    the K/V it reused from the previous call (with max_new_tokens=1 that call's prompt)."""
    seen = []
    prefill = llm.engine.prefill

    def spy(tokens, row, start_pos, *args, **kw):
        seen.append((start_pos, tokens.tolist()))
        return prefill(tokens, row, start_pos, *args, **kw)

    llm.engine.prefill = spy
    try:
        llm.chat(messages, max_new_tokens=1, **kwargs)
    finally:
        llm.engine.prefill = prefill
    assert len(seen) == 1
    start, tokens = seen[0]
    prompt = getattr(llm, "_test_last_prompt", [])[:start] + tokens
    llm._test_last_prompt = prompt
    return prompt


def test_save_pretrained_folder_chats(tmp_path, smollm2_folder):
    hf = transformers.AutoTokenizer.from_pretrained(smollm2_folder)
    folder = tmp_path / "saved"
    hf.save_pretrained(folder)
    tiny_llama(folder, len(hf))
    assert (folder / "chat_template.jinja").read_text() == hf.chat_template
    assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())
    llm = pyruntime.LLM(folder, progress=False)
    messages = CONVERSATIONS["system-multi-turn"]
    assert prompt_of_chat(llm, messages) == hf_ids(hf, messages, add_generation_prompt=True)


def test_chat_passes_template_options(tmp_path, smollm2_folder):
    # Needs LLM.chat to encode the rendering without added special tokens and to pass
    # chat_template= / tools= / template kwargs to the tokenizer.
    hf = transformers.AutoTokenizer.from_pretrained(family_folder(tmp_path / "src", smollm2_folder, "llama-3.1"))
    hf.chat_template = {"default": hf.chat_template, "tool_use": TOOLS}
    folder = tmp_path / "saved"
    hf.save_pretrained(folder)
    tiny_llama(folder, len(hf))
    assert (folder / "additional_chat_templates" / "tool_use.jinja").exists()
    llm = pyruntime.LLM(folder, progress=False)
    messages = CONVERSATIONS["system"]
    assert prompt_of_chat(llm, messages) == hf_ids(hf, messages, add_generation_prompt=True)
    assert prompt_of_chat(llm, messages, chat_template="tool_use", tools=[WEATHER]) == \
        hf_ids(hf, messages, chat_template="tool_use", tools=[WEATHER], add_generation_prompt=True)
    assert prompt_of_chat(llm, messages, chat_template_kwargs={"date_string": "01 Jan 2030"}) == \
        hf_ids(hf, messages, date_string="01 Jan 2030", add_generation_prompt=True)
