"""`eyescreen serve`: a FastAPI app with a screening page and a JSON API, run under uvicorn.

GET /            the page (drop one or two eyes, see probabilities, referable flag, Grad-CAM overlays)
POST /v1/predict multipart `right` and/or `left` image (several of an eye: the part repeated), `explain=true`
                 for overlays (base64 PNG)
GET /health      liveness and which model is loaded
GET /docs, /openapi.json   the API description (FastAPI)
"""

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse

from .checkpoint import BEST
from .service import MAX_PER_SIDE, MAX_UPLOAD_BYTES, Screener, Upload, UploadError

# A request holds two photographs' worth (twice the per-file limit), however many it sends (several fields
# per eye), plus multipart overhead; anything larger is refused before it is parsed.
_BODY_SLACK = 256 * 1024


class _BodyLimit:
    """ASGI middleware: refuse a request body over `limit` bytes with 413, whether or not the client
    declared its length, before the multipart parser spools it anywhere."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _refuse(send, self.limit)
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _refuse(send, self.limit)


class _TooLarge(Exception):
    pass


async def _refuse(send, limit: int) -> None:
    body = json.dumps({"detail": f"request too large: the limit is {limit / 2**20:.1f} MB "
                                 "(raised with `eyescreen serve --max-upload-mb`)"}).encode()  # fmt: skip
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def create_app(screener: Screener, max_pending: int = 64):
    """The app around a loaded Screener; inference runs in a pool of `screener.workers` threads and at
    most `max_pending` requests wait for it (more get 503 rather than an ever-growing queue)."""
    app = FastAPI(
        title="eyescreen",
        summary="Screen fundus photographs for eye disease, with Grad-CAM explanations.",
        version="0.1.0",
    )
    pool = ThreadPoolExecutor(max_workers=screener.workers, thread_name_prefix="eyescreen")
    pending = asyncio.Semaphore(max_pending)
    page = (resources.files("eyescreen") / "web" / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", **screener.describe()}

    @app.post("/v1/predict")
    async def predict(
        right: Annotated[
            list[UploadFile] | None, File(description=f"photograph of the right eye (up to {MAX_PER_SIDE})")
        ] = None,
        left: Annotated[
            list[UploadFile] | None, File(description=f"photograph of the left eye (up to {MAX_PER_SIDE})")
        ] = None,
        explain: Annotated[bool, Query(description="add Grad-CAM overlays as base64 PNG")] = False,
    ) -> dict:
        """Per-eye and patient results: predicted class, class probabilities, referable flag at the
        checkpoint's operating point (null when the checkpoint is not calibrated). Several photographs of
        an eye (two fields): the patient takes the right-left combination with the higher disease score;
        `eyes.<side>` is that combination's photograph, the others are in `eyes.<side>.other_photographs`."""
        uploads = []
        for side, parts in (("right", right), ("left", left)):
            for part in parts or []:
                data = await part.read(screener.max_upload_bytes + 1)
                uploads.append(Upload(side, part.filename or "", data))
                await part.close()
        if pending.locked():
            raise HTTPException(503, "server busy: too many requests waiting, try again shortly")
        async with pending:
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(pool, lambda: screener.screen(uploads, explain=explain))
            except UploadError as e:
                raise HTTPException(e.status, str(e)) from None

    app.add_middleware(_BodyLimit, limit=2 * screener.max_upload_bytes + _BODY_SLACK)
    app.router.on_shutdown.append(lambda: pool.shutdown(wait=False, cancel_futures=True))
    return app


def demo_checkpoint(run_dir: str | Path = "runs/demo") -> Path:
    """The demo model, trained first from the bundled sample when there is none yet, or when the demo
    that made it was interrupted (its report, written last, is missing): a half-trained model is not it."""
    best = Path(run_dir) / BEST
    finished = (Path(run_dir) / "report" / "report.json").is_file()
    if not (best.is_file() and finished):
        from .demo import run_demo

        why = "an unfinished demo run" if best.is_file() else "no demo model"
        print(f"no --checkpoint given and {why} in {run_dir}: training it on the bundled sample "
              "first (a few minutes on a CPU, once; pass --checkpoint to serve your own model)")  # fmt: skip
        run_demo(run_dir)
    return best


def serve(checkpoint: str | Path | None, host: str = "127.0.0.1", port: int = 8000, workers: int = 2,
          max_upload_mb: float = MAX_UPLOAD_BYTES / 2**20, device: str = "auto") -> None:  # fmt: skip
    import uvicorn

    path = Path(checkpoint) if checkpoint else demo_checkpoint()
    screener = Screener(path, workers=workers, device=device, max_upload_bytes=int(max_upload_mb * 2**20))
    print(f"serving {path} ({screener.meta['model']['name']}; classes {', '.join(screener.classes)})")
    print(f"open http://{host}:{port}/ in a browser; the API is described at http://{host}:{port}/openapi.json "
          "(/docs draws it with Swagger UI, fetched from a CDN: blank on an offline machine)")  # fmt: skip
    uvicorn.run(create_app(screener), host=host, port=port, log_level="info")
