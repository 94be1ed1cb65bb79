"""CPU time per request of the read endpoints (a script, not a test): a figure the box's load barely moves.

    uv run python benchmarks/request_cpu.py [SOURCE_ROOT]    # SOURCE_ROOT: another checkout, e.g. an old commit

The app runs in this process (embedded SQLite in a temp dir, lifespan run, no server, no
worker); one key, one teacher and 5 finished jobs with a ~3.6 KB answer are inserted; then 300
sequential requests per endpoint over httpx's ASGI transport, after 20 warm-up ones.
``time.process_time()`` counts this process's CPU only (the in-process client included, ~0.3 ms),
so other engineers' load on the shared cores changes it far less than wall-clock figures.
"""
import asyncio, os, shutil, sys, tempfile, time
from pathlib import Path

DATA = tempfile.mkdtemp(prefix="request-cpu-")
os.environ["DFMSCD_DATA_DIR"] = DATA
os.environ["DFMSCD_RATE_LIMIT_PER_MINUTE"] = "100000000"
os.environ["DFMSCD_API_TORCH_WARM"] = "0"
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[1]))
import httpx
from dfmscd_service.api.main import create_app
from dfmscd_service.api.auth import create_api_key
from dfmscd_service.core.db import session_scope
from dfmscd_service.core import models as M

REPORT = {"timings": {f"phase{i}": i * 1.5 for i in range(20)}, "pool": {"label_histogram": list(range(10)),
          "teacher_argmax_histogram": list(range(10)), "balance": 0.9}, "students": {f"s{i}": {"acc": 0.5, "epochs": list(range(50))} for i in range(3)},
          "epochs": [{"epoch": e, "loss": 0.1 * e, "acc": [0.1] * 3} for e in range(40)]}

async def main():
    app = create_app()
    async with app.router.lifespan_context(app):
        with session_scope() as s:
            key, secret = create_api_key(s, "m")
            t = M.Teacher(id=M.new_id("tch"), owner_id=key.owner_id, sha256="0" * 64, size_bytes=1, file_format="safetensors",
                          storage_key="x", card={"architecture": "resnet8", "num_classes": 10, "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.25]}, filename="t")
            s.add(t); s.flush()
            ids = []
            for _ in range(5):
                j = M.Job(id=M.new_id("job"), owner_id=key.owner_id, teacher_id=t.id, status="succeeded", preset="fast", config={"a": 1, "b": list(range(30))},
                          budget={"epochs": 2}, seed=0, job_metadata={}, progress=1.0, epoch=2, attempts=1, report=REPORT, enqueued_at=M.utcnow())
                j.students = [M.JobStudent(position=0, name="resnet8", architecture="resnet8", arch_kwargs={}, status="succeeded", partial=False,
                                           parameters=1000, metrics={"acc": 0.5}, exports={})]
                s.add(j); ids.append(j.id)
        h = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=h) as c:
            r = await c.get(f"/v1/jobs/{ids[0]}"); print("poll body bytes", len(r.content), r.status_code)
            targets = (("healthz", "/healthz"), ("poll", f"/v1/jobs/{ids[0]}"), ("job_list", "/v1/jobs?limit=20"), ("teacher_list", "/v1/teachers?limit=20"))
            only = os.environ.get("ONLY")
            for name, path in [t for t in targets if not only or t[0] == only] * (10 if only else 1):
                for _ in range(20): await c.get(path)
                n = 300; t0 = time.process_time()
                for _ in range(n):
                    r = await c.get(path)
                assert r.status_code == 200, r.text
                print(f"{name:13s} {(time.process_time() - t0) / n * 1000:.2f} ms CPU/request (incl. httpx client)")
try:
    asyncio.run(main())
finally:
    shutil.rmtree(DATA, ignore_errors=True)
