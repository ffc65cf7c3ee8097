"""A FastAPI app for forklift's ASGI tests: path and query parameters, a JSON body, a
streaming response, a background task, a dependency raising HTTPException, and
lifespan state."""
import asyncio
import os
import tempfile
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel

@asynccontextmanager
async def lifespan(app):
    yield {"greeting": "hello from lifespan", "pid": os.getpid()}


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.get("/", response_class=PlainTextResponse)
def root():
    return "Hello world"


@app.get("/async", response_class=PlainTextResponse)
async def root_async():
    return "Hello async world"


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None, limit: int = 10):
    return {"item_id": item_id, "q": q, "limit": limit}


@app.post("/items")
async def create_item(item: Item):
    return {"name": item.name, "total": item.price * 2, "tags": item.tags}


@app.get("/stream")
async def stream():
    async def gen():
        for i in range(5):
            yield b"chunk %d\n" % i
            await asyncio.sleep(0.01)
    return StreamingResponse(gen(), media_type="text/plain")


def write_done(token: str):
    with open(os.path.join(tempfile.gettempdir(), "forklift-fastapi-bg-" + token), "w") as f:
        f.write(token)


@app.post("/background/{token}")
async def background(token: str, tasks: BackgroundTasks):
    tasks.add_task(write_done, token)
    return {"scheduled": token}


def require_key(request: Request):
    if request.headers.get("x-key") != "secret":
        raise HTTPException(status_code=403, detail="bad key")
    return "ok"


@app.get("/guarded")
async def guarded(key: str = Depends(require_key)):
    return {"key": key}


@app.get("/state")
async def state(request: Request):
    return {"greeting": request.state.greeting, "pid": request.state.pid}
