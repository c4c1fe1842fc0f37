"""An image the daemon cannot decode is named in the 400: the request body, or the multipart part and file."""

from __future__ import annotations

import httpx
from bundles import sample_images


def test_undecodable_body_and_parts_are_named(served) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        body = http.post("/v1/predict", content=b"this is not an image")
        assert body.status_code == 400
        message = body.json()["error"]
        assert "the request body: cannot decode image" in message and "BytesIO" not in message

        good = sample_images(1)[0]
        parts = [("images", ("cat.png", good, "image/png")), ("images", ("notes.txt", b"not an image", "text/plain"))]
        multipart = http.post("/v1/predict", files=parts)
        assert multipart.status_code == 400
        message = multipart.json()["error"]
        assert "part 'images' (notes.txt): cannot decode image" in message and "BytesIO" not in message
        assert "cat.png" not in message
