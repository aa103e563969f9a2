"""`pocketml generate` and `pocketml chat`: run a language-model artifact (no torch), streaming tokens."""
from __future__ import annotations

import sys

import click

from ..common import exits_on_error

SAMPLING = (
    click.option("--max-new-tokens", default=128, show_default=True, help="Stop after this many new tokens."),
    click.option("--temperature", default=0.0, show_default=True, help="0 = greedy."),
    click.option("--top-k", default=0, show_default=True, help="Sample from the k most likely tokens (0: all)."),
    click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling: the smallest set with this mass."),
    click.option("--seed", type=int, help="Random seed for sampling (the same seed gives the same text)."),
    click.option("--stop", multiple=True, help="Stop when this string appears (repeatable); it is not printed."),
    click.option("--threads", type=int, help="Runtime threads [default: the manifest's recommendation, else 1]."),
)


def sampling_options(fn):
    for option in reversed(SAMPLING):
        fn = option(fn)
    return fn


def _open(path, threads):
    import pocketml.runtime as rt
    from pocketml.runtime.errors import UsageError
    lm = rt.load(path, threads=threads)
    if not hasattr(lm, "generate"):
        raise UsageError(f"{path}: not a language model artifact (task {lm.manifest.task!r}); use `pocketml profile`")
    return lm


def _stream(lm, prompt, opts) -> None:
    for piece in lm.generate(prompt, max_new_tokens=opts["max_new_tokens"], temperature=opts["temperature"],
                             top_k=opts["top_k"], top_p=opts["top_p"], seed=opts["seed"], stop=list(opts["stop"])):
        click.echo(piece, nl=False)
    click.echo()
    s = lm.stats
    if s.get("decode_s"):
        rate = len(s["decode_s"]) / sum(s["decode_s"])
        click.echo(f"[{s['prompt_tokens']} prompt tokens, first token after {s['prefill_s'] * 1e3:.0f} ms, "
                   f"{s['generated_tokens']} generated at {rate:.1f} tokens/s, {lm.backend}; stopped by "
                   f"{s['stopped_by']}]", err=True)


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--prompt", required=True, help="The prompt text.")
@click.option("--chat", "as_chat", is_flag=True, help="Send the prompt as a user message through the chat template.")
@sampling_options
def generate(artifact, prompt, as_chat, **opts):
    """Generate text from a language-model artifact, streaming it as it comes.

    \b
    Examples:
      pocketml generate out/smollm2/tflite-int4 --prompt "Write a haiku about the sea" --max-new-tokens 64
      pocketml generate out/smollm2/onnx-int4 --prompt "Hi!" --chat --temperature 0.7 --seed 1
    """
    with exits_on_error():
        lm = _open(artifact, opts.pop("threads"))
        _stream(lm, [{"role": "user", "content": prompt}] if as_chat else prompt, opts)


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--system", help="A system message to start the conversation with.")
@sampling_options
def chat(artifact, system, **opts):
    """Chat with a language-model artifact (its chat template, streamed replies). Ctrl-D or /exit ends.

    \b
    Example:
      pocketml chat out/smollm2/onnx-int4
    """
    with exits_on_error():
        lm = _open(artifact, opts.pop("threads"))
        messages = [{"role": "system", "content": system}] if system else []
        lm.encode(messages + [{"role": "user", "content": "x"}])        # no chat template: exit 2 now, not later
        while True:
            try:
                line = input("you> " if sys.stdin.isatty() else "")
            except EOFError:
                break
            if line.strip() in ("/exit", "/quit"):
                break
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            click.echo("model> ", nl=False)
            reply = []
            for piece in lm.generate(messages, max_new_tokens=opts["max_new_tokens"], temperature=opts["temperature"],
                                     top_k=opts["top_k"], top_p=opts["top_p"], seed=opts["seed"],
                                     stop=list(opts["stop"])):
                reply.append(piece)
                click.echo(piece, nl=False)
            click.echo()
            messages.append({"role": "assistant", "content": "".join(reply)})
