"""What the app refuses from clients, checked where each input would turn into something dangerous.

Ids. Image ids, label tags and the ids of generated images (``ct_id``, ``refined_id``) become file names: MONAI
Label's LocalDatastore joins them to the studies folder as they are, so ``../x`` or ``/x`` would read or write
anywhere the server may. The datastore is the one place where every id turns into a path, whichever route, task,
background job or Python caller it came from, so :class:`CheckedLocalDatastore` checks each id there
(:func:`check_id`) instead of each endpoint guessing which of its inputs end up on disk. Infer and train tasks run
the same check on the ids in their parameters before they start, so a bad output id costs no inference.

HTTP inputs. Some requests go wrong inside monailabel's endpoint functions, before the app is called: they parse
``params`` with ``json.loads`` (not JSON -> 500), write uploads to temporary files, and put either that temporary
file or the client's ``image`` string in the same ``request["image"]``. :func:`install_http_guards` wraps those
functions once at start-up: JSON arguments must be objects, ids are checked before an upload is written, ``params``
may not set the keys the server fills in (``image``, ``label``...), and the app learns from :data:`REQUEST_FILES`
whether the request carried files, so it never takes a client's string for a server path. Training is checked in
the server process before monailabel submits the background job, so a request with nothing to train on is refused
at once. monailabel's DICOMweb proxy (``/proxy/dicom/...``, used by its OHIF viewer) forwards only paths under the
DICOMweb root (:func:`_proxy_check`). On a DICOMweb datastore ids must also be DICOM UIDs (:func:`check_uid`).

Responsiveness. monailabel runs an inference inside its async endpoint, stalling every other request until it
ends; :func:`serve_inference_in_threads` serves that route from worker threads instead.

Browser origins. monailabel allows every origin, with credentials, unless ``MONAI_LABEL_CORS_ORIGINS`` is set; a web
page on any site could then drive a server on the user's machine. :func:`configure_cors` allows only the origins the
user configured (``--conf cors_origins``), none by default, and :class:`OriginCheck` refuses requests that pages on
other origins send without asking (form posts), which CORS alone lets through.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import logging
import os
import pathlib
import re
import sys
import urllib.parse
from dataclasses import dataclass

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.utils.app import app_instance

logger = logging.getLogger(__name__)

MAX_ID_BYTES = 200  # file names are limited to 255 bytes; leaves room for an extension and '_uncertainty'
ID_HINT = "ids and tags are plain names such as 'chest_01': no folder parts, no '..', no leading '.'"
IMAGE_HINT = "pass the id of an image in the datastore (PUT /datastore/image adds one) or upload the file"
# keys of an infer request that the server fills in from the URL and the uploaded files, never from params
RESERVED_PARAMS = ("model", "image", "label", "session", "image_id")


def id_problem(value) -> str | None:
    """Why ``value`` cannot be used as a datastore id or tag, or None when it can."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value:
        return "is empty"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        return f"is too long ({size} bytes as UTF-8, at most {MAX_ID_BYTES})"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character"
    if "/" in value or "\\" in value:
        return "contains a path separator (/ or \\)"
    if value.startswith("."):
        return "starts with '.'"
    if ".." in value:
        return "contains '..'"
    return None


def check_id(value, what: str, hint: str = ID_HINT) -> str:
    """``value`` if it is a safe datastore id or tag; otherwise HTTP 400 saying what is wrong and what to do.

    Absolute paths are refused by the separator rule; the answer never depends on what exists on the server.
    """
    problem = id_problem(value)
    if problem is None:
        return value
    shown = ""
    if isinstance(value, str) and value:
        shown = " " + repr(value if len(value) <= 80 else value[:80] + "...")
    raise HTTPException(400, f"{what}{shown} {problem}: {hint}")


DICOM_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID_CHARS = 64


def check_uid(value, what: str) -> str:
    """``value`` if it is a safe id (:func:`check_id`) and a DICOM UID; otherwise HTTP 400.

    On a DICOMweb datastore, ids are Series or Study Instance UIDs and become path segments of the server's URLs
    (``/studies/{uid}/series/{uid}``) as well as cache folder names: nothing but digits and dots may get there.
    """
    check_id(value, what)
    if len(value) > MAX_UID_CHARS or not DICOM_UID.match(value):
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise HTTPException(
            400,
            f"{what} {shown!r} is not a DICOM UID (digits and dots, at most {MAX_UID_CHARS} characters): on a "
            "DICOMweb datastore, images are named by their Series Instance UID (or, for xray2ct, a Study Instance UID)",
        )
    return value


def json_object(text, what: str) -> dict:
    """The JSON object in the form field ``text`` (empty means {}); HTTP 400 for anything else."""
    if isinstance(text, dict):
        return text
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    example = '\'{"name": "value"}\''
    try:
        value = json.loads(text)
    except ValueError as e:
        raise HTTPException(400, f"{what} is not valid JSON ({e}): send a JSON object such as {example}") from None
    if not isinstance(value, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        raise HTTPException(400, f"{what} must be a JSON object such as {example}, got {kind}")
    return value


class CheckedLocalDatastore(LocalDatastore):
    """LocalDatastore that refuses ids and tags that are not plain names, and unknown images, with HTTP 4xx.

    Images must also have one of the datastore's file types: the datastore keeps its own index (a .json file) in the
    studies folder, and an upload must not be able to replace it.
    """

    def _image_types(self) -> list[str]:
        return [e.replace("*", "") for e in self._extensions]

    def _known_image(self, image_id: str) -> str:
        check_id(image_id, "image id")
        if image_id not in self._datastore.objects:
            raise HTTPException(404, f"no image with id {image_id!r} in the datastore")
        return image_id

    def check_image_file(self, file_name: str) -> str:
        """The datastore's file type (extension) of an image file named ``file_name``; HTTP 400 if it keeps none."""
        _, ext = self._to_id(os.path.basename(file_name or ""))
        if ext not in self._image_types():
            raise HTTPException(
                400,
                f"unsupported image file type {ext or '(no extension)'!r}; "
                f"the datastore keeps {', '.join(self._image_types())}",
            )
        return ext

    def check_label_target(self, image_id, label_tag) -> None:
        """HTTP 4xx unless a label may be saved under ``label_tag`` for ``image_id``."""
        check_id(label_tag, "label tag")
        if image_id not in self._datastore.objects:
            check_id(image_id, "image id")
            raise HTTPException(
                404, f"no image with id {image_id!r} in the datastore: add the image (PUT /datastore/image) first"
            )

    def add_image(self, image_id, image_filename, image_info):
        self.check_image_file(image_filename)
        image_id = check_id(image_id or self._to_id(os.path.basename(image_filename))[0], "image id")
        return super().add_image(image_id, image_filename, json_object(image_info, "image info"))

    def save_label(self, image_id, label_filename, label_tag, label_info):
        self.check_label_target(image_id, label_tag)
        return super().save_label(image_id, label_filename, label_tag, json_object(label_info, "label info"))

    def get_image_uri(self, image_id):
        return super().get_image_uri(check_id(image_id, "image id"))

    def get_image_info(self, image_id):
        return super().get_image_info(check_id(image_id, "image id"))

    def get_label_uri(self, label_id, label_tag):
        return super().get_label_uri(check_id(label_id, "label id"), check_id(label_tag, "label tag"))

    def get_label_info(self, label_id, label_tag):
        return super().get_label_info(check_id(label_id, "label id"), check_id(label_tag, "label tag"))

    def get_labels_by_image_id(self, image_id):
        return super().get_labels_by_image_id(check_id(image_id, "image id"))

    def remove_image(self, image_id):
        return super().remove_image(self._known_image(image_id))

    def remove_label(self, label_id, label_tag):
        return super().remove_label(check_id(label_id, "label id"), check_id(label_tag, "label tag"))

    def update_image_info(self, image_id, info):
        return super().update_image_info(self._known_image(image_id), json_object(info, "image info"))

    def update_label_info(self, label_id, label_tag, info):
        check_id(label_id, "label id")
        check_id(label_tag, "label tag")
        if not self._datastore.label(label_id, label_tag):
            raise HTTPException(404, f"no label {label_tag!r} for image {label_id!r} in the datastore")
        return super().update_label_info(label_id, label_tag, json_object(info, "label info"))


@dataclass(frozen=True)
class RequestFiles:
    """What an HTTP infer request carried besides its query string: files, or an existing session's image."""

    image: bool = False
    label: bool = False
    session: bool = False


# Set by the infer endpoint guard for the duration of one request. Outside an HTTP request (batch inference, the
# Python API) it is the default: no uploads, so every image must be a datastore id.
REQUEST_FILES: contextvars.ContextVar[RequestFiles] = contextvars.ContextVar("request_files", default=RequestFiles())


def _bound(signature: inspect.Signature, args, kwargs) -> dict:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _guard(module, name: str, check):
    """Replace ``module.name`` (an endpoint's worker function) by one that runs ``check`` on its arguments first.

    ``check`` raises HTTPException for a bad request, and may return a context manager to run the call in.
    monailabel's route handlers look these functions up by name at each call, so routes, authentication dependencies
    and the API documentation stay monailabel's own.
    """
    original = getattr(module, name)
    if getattr(original, "_checked_by_app", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def checked(*args, **kwargs):
        with check(_bound(signature, args, kwargs)) or contextlib.nullcontext():
            return original(*args, **kwargs)

    checked._checked_by_app = True
    setattr(module, name, checked)


def _ids_and_json(ids: dict, objects: tuple, store_check=None):
    """Check id arguments, JSON-object arguments and, with ``store_check(datastore, args)``, the datastore's rules.

    monailabel's endpoints copy the upload to a temporary file before they call the datastore, and leave it behind
    when the datastore refuses; checking here first means a refused request writes nothing at all.
    """

    def check(args):
        for arg, what in ids.items():
            if args.get(arg) is not None:
                check_id(args[arg], what)
        for arg in objects:
            json_object(args.get(arg), arg)
        store = app_instance().datastore() if store_check else None
        if isinstance(store, CheckedLocalDatastore):
            store_check(store, args)

    return check


def _image_file_kept(store: CheckedLocalDatastore, args) -> None:
    # the endpoint names its temporary copy after the suffixes of the client's file name (.nii.gz if it has none)
    name = getattr(args.get("file"), "filename", None)
    store.check_image_file("upload" + ("".join(pathlib.Path(name).suffixes) if name else ".nii.gz"))


def _label_target_known(store: CheckedLocalDatastore, args) -> None:
    store.check_label_target(args["image"], args["tag"])


@contextlib.contextmanager
def _request_files(files: RequestFiles):
    token = REQUEST_FILES.set(files)
    try:
        yield
    finally:
        REQUEST_FILES.reset(token)


def _infer_check(args):
    params = json_object(args.get("params"), "params")
    reserved = sorted(k for k in params if k in RESERVED_PARAMS or k.startswith("_"))
    if reserved:
        raise HTTPException(
            400,
            f"params may not set {', '.join(map(repr, reserved))}: the server fills these in from the request "
            "(the image id in the URL, the uploaded files)",
        )
    image, file, session_id = args.get("image"), args.get("file"), args.get("session_id")
    if not file and image:
        check_id(image, "image", IMAGE_HINT)
    if not (file or image or session_id):
        raise HTTPException(400, f"no image given: {IMAGE_HINT}")
    return _request_files(RequestFiles(image=bool(file), label=bool(args.get("label")), session=bool(session_id)))


def _train_check(all_models: bool):
    def check(args):
        params = args.get("params") or {}
        app = app_instance()
        if all_models:  # the deprecated POST /train/: every trainer, with its params merged in as monailabel does
            for model in app.info()["trainers"]:
                own = params.get(model) or {}
                if not isinstance(own, dict):
                    raise HTTPException(400, f"params[{model!r}] must be a JSON object of training settings")
                app.check_train({"model": model, **own, **params})
        else:
            app.check_train({"model": args.get("model"), **params})

    return check


def _proxy_check(args):
    """``/proxy/dicom/...`` (OHIF's way to the DICOMweb server) stays under the DICOMweb root.

    monailabel joins the client's path to the server URL, and HTTP clients resolve ``..`` in it: ``..%2fsystem``
    would reach the server's whole API beyond DICOMweb (Orthanc's REST API, where a POST can change stored data
    or shut Orthanc down) for anyone who may use the viewer. Percent-encoding is undone repeatedly, so a doubly
    encoded ``..`` is refused too.
    """
    path = str(args.get("path") or "")
    for _ in range(4):
        decoded = urllib.parse.unquote(path)
        if decoded == path:
            break
        path = decoded
    if any(part in (".", "..") for part in path.replace("\\", "/").split("/")) or "\x00" in path:
        raise HTTPException(400, "the DICOMweb proxy serves paths under the DICOMweb root only: no '.' or '..' parts")


def install_http_guards() -> bool:
    """Check requests in monailabel's endpoint functions before they write uploads or parse ``params`` unchecked.

    Only inside a running server (``monailabel.app`` imported); the training subprocess and Python callers have no
    endpoints to guard. Installing twice is harmless.
    """
    if "monailabel.app" not in sys.modules:
        return False
    from monailabel.endpoints import datastore, infer, proxy, train

    _guard(infer, "run_inference", _infer_check)
    _guard(proxy, "proxy_dicom", _proxy_check)
    _guard(datastore, "add_image", _ids_and_json({"image": "image id"}, ("params",), _image_file_kept))
    _guard(
        datastore,
        "save_label",
        _ids_and_json({"image": "image id", "tag": "label tag"}, ("params",), _label_target_known),
    )
    _guard(datastore, "update_image_info", _ids_and_json({"image": "image id"}, ("info",)))
    _guard(datastore, "update_label_info", _ids_and_json({"label": "label id", "tag": "label tag"}, ("info",)))
    _guard(train, "run_model", _train_check(all_models=False))
    _guard(train, "run", _train_check(all_models=True))
    return True


ORIGIN = re.compile(r"^https?://[^/\s?#]+$")


def allowed_origins(conf_value: str | None, env_origins=()) -> list[str]:
    """Browser origins from ``--conf cors_origins`` (comma-separated) and ``MONAI_LABEL_CORS_ORIGINS``; [] = none.

    ``*`` allows every origin, without credentials.
    """
    origins = [o.strip() for o in (conf_value or "").split(",") if o.strip()]
    origins += [str(o) for o in env_origins]  # pydantic's URL type adds a trailing slash that browsers never send
    origins = list(dict.fromkeys(o if o == "*" else o.rstrip("/") for o in origins))
    bad = [o for o in origins if o != "*" and not ORIGIN.match(o)]
    if bad:
        raise ValueError(
            f"cors_origins: {bad} are not origins; give scheme://host[:port] with no path, "
            "e.g. --conf cors_origins http://localhost:3000,https://viewer.example.org"
        )
    return ["*"] if "*" in origins else origins


class OriginCheck:
    """ASGI middleware: 403 for a request that a web page on another, unlisted origin sent.

    CORS only keeps the answer from such a page; a form POST (``/infer`` with a new ``ct_id``, say) still runs.
    Browsers put ``Origin`` on every cross-origin request that can change something, so refusing unlisted origins
    stops those too. Clients that are not browsers (curl, 3D Slicer, MONAILabelClient) send no ``Origin`` and
    pages served by the server itself send its own; both pass.
    """

    def __init__(self, app, origins: list[str]):
        self.app, self.origins = app, set(origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and "*" not in self.origins:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            origin = headers.get("origin")
            same = origin is not None and origin.split("://", 1)[-1] == headers.get("host")
            if origin is not None and origin not in self.origins and not same:
                from starlette.responses import JSONResponse

                detail = (
                    f"requests from web pages on {origin} are not allowed: start the server with "
                    "--conf cors_origins listing the viewer's origin"
                )
                await JSONResponse({"detail": detail}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def configure_cors(fastapi_app, origins: list[str]) -> None:
    """Replace monailabel's allow-everything CORS middleware by one allowing ``origins`` only, behind OriginCheck.

    monailabel builds its middleware before the app exists; the stack is rebuilt from ``user_middleware`` at the
    next request once it is reset.
    """
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    cors = Middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials=origins != ["*"],
        allow_methods=["*"],
        allow_headers=["*"],
    )
    others = [m for m in fastapi_app.user_middleware if m.cls not in (CORSMiddleware, OriginCheck)]
    fastapi_app.user_middleware = [Middleware(OriginCheck, origins=origins), cors] + others
    fastapi_app.middleware_stack = None
    logger.info(f"browser origins allowed: {', '.join(origins) if origins else 'none (same-origin only)'}")


def serve_inference_in_threads(fastapi_app) -> bool:
    """Serve ``POST /infer/{model}`` from a worker thread, so a long inference does not stall the server.

    monailabel's infer endpoint is an ``async`` function that runs the whole inference in place: the event loop,
    which answers every request, waits for it, and ``GET /info/`` or a datastore call waits with it. The route is
    replaced by a plain function with the same signature (so the same parameters, upload handling, authentication
    dependency and API documentation), which FastAPI runs in its thread pool. It calls monailabel's endpoint
    function :func:`monailabel.endpoints.infer.run_inference` (with the guards above) by name, as the original does.

    Concurrent requests for one model wait for each other inside the task (one lock per task); requests for
    different models run side by side. Returns whether a route was replaced; installing twice is harmless.
    """
    from fastapi.routing import APIRoute
    from monailabel.endpoints import infer

    original = infer.api_run_inference
    signature = inspect.signature(original)

    def api_run_inference(**kwargs):
        kwargs.pop("user", None)  # checked by the route's dependency before this runs
        return infer.run_inference(**kwargs)

    api_run_inference.__signature__ = signature
    api_run_inference.__doc__ = original.__doc__
    api_run_inference._in_threads = True

    def replace(routes: list, add) -> bool:
        for k, route in enumerate(routes):
            if isinstance(route, APIRoute) and getattr(route.endpoint, "_in_threads", False):
                return True
            if isinstance(route, APIRoute) and route.endpoint is original:
                del routes[k]
                add(route)
                return True
        return False

    def add_to_app(route):  # FastAPI versions that copy included routes into the app's own list
        fastapi_app.router.add_api_route(
            route.path,
            api_run_inference,
            methods=list(route.methods),
            summary=route.summary,
            name=route.name,
            tags=route.tags,
            responses=route.responses,
        )

    def add_to_router(route):  # FastAPI versions that keep included routers and read their routes at request time
        infer.router.add_api_route(
            route.path[len(infer.router.prefix) :],
            api_run_inference,
            methods=list(route.methods),
            summary=route.summary,
            name=route.name,
        )

    done = replace(fastapi_app.router.routes, add_to_app) or replace(infer.router.routes, add_to_router)
    if done:
        logger.info("inference requests run in worker threads; the server keeps answering meanwhile")
    else:
        logger.warning("could not find monailabel's infer route: inference requests block the server while they run")
    return done
