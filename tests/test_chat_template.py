"""--chat-template: a template (a file, or the text) for a model without one, with the request's
chat_template_kwargs; a value that is neither, or a template Jinja cannot compile, is refused at start."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from kairos.server.config import ServerConfig
from server_helpers import ServerProcess

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}{% if shout %}!{% endif %}")


def test_a_value_neither_file_nor_template_is_refused():
    with pytest.raises(ValueError, match=r"^chat_template: 'no/such/file.jinja' is neither a file nor a Jinja template$"):
        ServerConfig(chat_template="no/such/file.jinja")
    with pytest.raises(ValueError, match=r"is neither a file nor a Jinja template$"):
        ServerConfig(chat_template="x" * 300)  # (too long a name for a path: not an OSError)
    assert ServerConfig(chat_template=TEMPLATE + " " * 300).chat_template.startswith("{% for")  # (inline, long)
    r = subprocess.run([sys.executable, "-m", "kairos.cli", "serve", "--chat-template", "nope"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert r.stderr.strip() == "kairos serve: chat_template: 'nope' is neither a file nor a Jinja template"


def test_a_template_jinja_cannot_compile_is_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match=r"^chat_template: not a valid Jinja template: unexpected '}' \(line 1\)$"):
        ServerConfig(chat_template="{% for m in messages %}{{ m.content }")
    bad = tmp_path / "t.jinja"
    bad.write_text("{% if add_generation_prompt %}\n<assistant>")
    with pytest.raises(ValueError, match=r"^chat_template: not a valid Jinja template: Unexpected end of template\. "
                                         r".* The innermost block that needs to be closed is 'if'\. \(line 2\)$"):
        ServerConfig(chat_template=str(bad))
    with pytest.raises(ValueError, match=r"No filter named 'nosuch'\. \(line 1\)$"):
        ServerConfig(chat_template="{{ messages | nosuch }}")
    # transformers' own extensions compile (the {% generation %} tag of assistant masks)
    ServerConfig(chat_template="{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}")


@pytest.mark.parametrize("as_file", [True, False])
def test_a_model_without_a_template_chats_with_the_servers(tiny_tok, tmp_path, as_file):
    _, path, tok = tiny_tok
    assert not getattr(tok, "chat_template", None)
    given = tmp_path / "t.jinja" if as_file else TEMPLATE
    if as_file:
        given.write_text(TEMPLATE)
    srv = ServerProcess("--model", str(path), "--chat-template", str(given), "--num-blocks", "64",
                        "--max-model-len", "128")
    try:
        messages = [{"role": "user", "content": "yes no"}]
        for kwargs, text in [(None, "<user>yes no<assistant>"), ({"shout": True}, "<user>yes no<assistant>!")]:
            r = httpx.post(srv.url + "/tokenize", json={"messages": messages, "chat_template_kwargs": kwargs}).json()
            assert r["tokens"] == tok(text, add_special_tokens=False).input_ids
        chat = httpx.post(srv.url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 3,
                                                                  "temperature": 0, "chat_template_kwargs": {"shout": 1}})
        assert chat.status_code == 200
        assert chat.json()["usage"]["prompt_tokens"] == len(tok("<user>yes no<assistant>!", add_special_tokens=False
                                                                ).input_ids)
    finally:
        srv.stop()
