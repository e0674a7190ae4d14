"""Greedy answers of N concurrent requests to a running `kiln serve` (the `openai` package),
written one per line to OUT, for comparing two builds: python3 serve_digest.py PORT N OUT

Each request has its own prompt, temperature 0 and 24 tokens. How many rows share a step
depends on when requests arrive, and rows on the matrix units round x to f16 where a lone row
does not, so two runs of one build may differ in a few answers: compare builds against the
spread of one build's runs."""
import asyncio
import sys

from openai import AsyncOpenAI


async def main(port, n, out):
    c = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)
    model = (await c.models.list()).data[0].id

    async def one(i):
        r = await c.completions.create(model=model, prompt=f"Story {i}: the {i % 7} travellers", max_tokens=24,
                                       temperature=0, extra_body={"ignore_eos": True})
        return r.choices[0].text.replace("\n", "\\n")

    texts = await asyncio.gather(*[one(i) for i in range(n)])
    await c.close()
    open(out, "w").write("\n".join(texts) + "\n")


asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
