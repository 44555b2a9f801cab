"""`pyruntime serve --ray --replicas 2`: a local Ray cluster on this machine with two replicas of
the bundled model (one thread each) behind Ray Serve's proxy; concurrent requests through the
official `openai` client all answer as LLM.generate does, and both replicas served."""

import asyncio
import collections

import pytest

from tests.conftest import MODEL
from tests.server.test_server import Server

pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")


def test_two_replicas_share_the_load(llm):
    s = Server("--ray", "--replicas", "2", "--threads", "1", start_timeout=300)
    try:
        s.wait_for_output("2 replica(s)")  # both loaded (the first answers /health before the second is up)
        prompts = [[{"role": "user", "content": f"Write one sentence about {x}."}]
                   for x in ["rivers", "bread", "the moon", "winter", "cats", "music", "trees", "rain"]]
        want = [llm.generate(llm.tokenizer.apply_chat_template(p, tokenize=True), max_new_tokens=10).text
                for p in prompts]

        async def main():
            c = s.async_client(key="none")

            async def one(i):
                raw = await c.chat.completions.with_raw_response.create(
                    model=MODEL, messages=prompts[i % 8], max_tokens=10, temperature=0)
                return raw.headers["x-pyruntime-replica"], raw.parse().choices[0].message.content

            return await asyncio.gather(*[one(i) for i in range(32)])

        got = asyncio.run(main())
        assert [text for _, text in got] == [want[i % 8] for i in range(32)]
        served = collections.Counter(replica for replica, _ in got)
        assert len(served) == 2, served  # both replicas answered, none of the 32 requests was lost
    finally:
        s.stop(timeout=120)
