"""The client commands of `duckcast`: register, login, logout, items, stats, watch.

The server is `--url`, else `DUCKCAST_URL`, else the one last logged in to, else
http://127.0.0.1:8000. Errors are one line on stderr; the exit status says what happened.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from service.wire import INT64_MAX, STATUSES, bounded_int

if TYPE_CHECKING:
    from service.client.credentials import Credentials
    from service.client.sync import Client
    from service.pb import duckcast_pb2 as pb

EXIT_OK = 0
EXIT_REFUSED = 1  # the server refused the request (4xx other than below, 5xx)
EXIT_USAGE = 2  # bad arguments (argparse)
EXIT_AUTH = 3  # not logged in, or the session is invalid, expired or revoked
EXIT_NOT_FOUND = 4  # no such item
EXIT_UNREACHABLE = 5  # the server could not be reached or is unavailable (after retries)
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES = f"""exit status:
  {EXIT_OK}  success
  {EXIT_REFUSED}  the server refused the request (invalid input, not the owner, ...)
  {EXIT_USAGE}  bad arguments
  {EXIT_AUTH}  not logged in, or the session expired or was revoked: run `duckcast login`
  {EXIT_NOT_FOUND}  no such item
  {EXIT_UNREACHABLE}  the server could not be reached or is unavailable
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)"""

Command = Callable[[argparse.Namespace], None]


class NotLoggedIn(Exception):
    pass


# -- argument types -------------------------------------------------------------------------


def _bounded(name: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = bounded_int(text, low, high)
        if value is None:
            raise argparse.ArgumentTypeError(f"{name} must be an integer from {low} to {high}")
        return value

    parse.__name__ = name  # argparse names the type in its error message
    return parse


item_id = _bounded("ID", 1, INT64_MAX)
priority = _bounded("priority", 0, 100)


# -- plumbing -------------------------------------------------------------------------------


def _credentials() -> Credentials:
    from service.client.credentials import Credentials

    return Credentials()


def _url(args: argparse.Namespace, creds: Credentials) -> str:
    from service.client.base import DEFAULT_URL

    url: str = args.url or os.environ.get("DUCKCAST_URL") or creds.default_url() or DEFAULT_URL
    return url.rstrip("/")


def _client(args: argparse.Namespace, *, signed_in: bool = True) -> Client:
    from service.client.sync import Client

    creds = _credentials()
    url = _url(args, creds)
    session = creds.session(url)
    if signed_in and session is None:
        raise NotLoggedIn(f"not logged in to {url}: run `duckcast login`")
    return Client(url, token=session.token if session else None)


def _fail(message: str, code: int) -> int:
    print(f"duckcast: {message}", file=sys.stderr)
    return code


def _runs(command: Command) -> Callable[[argparse.Namespace], int]:
    """A command as `duckcast` calls it: its errors become one line and an exit status."""

    def run(args: argparse.Namespace) -> int:
        from service.client import errors

        for noisy in ("httpx", "httpcore", "websockets"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            command(args)
        except NotLoggedIn as exc:
            return _fail(str(exc), EXIT_AUTH)
        except errors.Unauthorized as exc:
            return _fail(f"{exc.detail}: run `duckcast login`", EXIT_AUTH)
        except errors.NotFound as exc:
            return _fail(exc.detail, EXIT_NOT_FOUND)
        except (errors.TransportError, errors.ServiceUnavailable) as exc:
            return _fail(f"server unavailable: {exc}", EXIT_UNREACHABLE)
        except (errors.ClientError, ValueError, OSError) as exc:
            return _fail(str(exc), EXIT_REFUSED)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        return EXIT_OK

    return run


def _out(line: str) -> None:
    try:
        print(line, flush=True)
    except BrokenPipeError:
        # The reader went away (`duckcast watch | head -3`): stop quietly, like `cat`.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_OK)


# -- users ----------------------------------------------------------------------------------


def _ask_credentials(args: argparse.Namespace) -> tuple[str, str]:
    interactive = sys.stdin.isatty() and not args.password_stdin
    username = args.username or (input("username: ") if interactive else "")
    if args.password_stdin or not interactive:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
    if not username:
        raise ValueError("give --username (or run interactively)")
    return username, password


def _login(args: argparse.Namespace, register: bool) -> None:
    from service.client.credentials import Session

    username, password = _ask_credentials(args)
    with _client(args, signed_in=False) as api:
        if register:
            api.register(username, password)
        answer = api.login(username, password)
        _credentials().save(Session(api.url, answer.user.username, answer.token))
        expires = datetime.fromtimestamp(answer.expires_at.seconds).strftime("%Y-%m-%d %H:%M")
        done = "registered and logged in" if register else "logged in"
        _out(f"{done} to {api.url} as {answer.user.username} (session until {expires})")


def cmd_register(args: argparse.Namespace) -> None:
    _login(args, register=True)


def cmd_login(args: argparse.Namespace) -> None:
    _login(args, register=False)


def cmd_logout(args: argparse.Namespace) -> None:
    from service.client.errors import Unauthorized

    creds = _credentials()
    url = _url(args, creds)
    session = creds.session(url)
    if session is None:
        _out(f"not logged in to {url}")
        return
    # Already expired or revoked (401): forgetting the token is all there is left to do.
    with _client(args) as api, contextlib.suppress(Unauthorized):
        api.logout()
    creds.forget(url)
    _out(f"logged out of {url}")


# -- items ----------------------------------------------------------------------------------


def _when(item: pb.Item) -> str:
    return datetime.fromtimestamp(item.updated_at.seconds).strftime("%Y-%m-%d %H:%M")


def _fit(text: str, width: int | None) -> str:
    text = " ".join(text.split())  # one line per item, whatever the title holds
    if width is None or len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


def item_table(items: Sequence[pb.Item], width: int | None) -> list[str]:
    """Rows of an aligned table; titles cut to `width` columns in all (None: never cut)."""
    header = ("ID", "STATUS", "PRI", "UPDATED", "TITLE")
    rows = [(str(it.id), it.status, str(it.priority), _when(it), it.title) for it in items]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    fixed = sum(widths) + 2 * 4
    title_width = None if width is None else max(width - fixed, 10)
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if i in (0, 2) else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row[:4], widths, strict=True))
        ]
        lines.append("  ".join([*cells, _fit(row[4], title_width)]).rstrip())
    return lines


def cmd_items_list(args: argparse.Namespace) -> None:
    with _client(args) as api:
        owner = api.me().id if args.mine else None
        page = api.list_items(args.page, args.limit, owner_id=owner, status=args.status, q=args.q)
    if not page.items:
        _out("no items" if page.total == 0 else f"no items on page {page.page} of {page.pages}")
        return
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    for line in item_table(page.items, width):
        _out(line)
    more = f"; --page {page.page + 1} for more" if page.page < page.pages else ""
    items = "1 item" if page.total == 1 else f"{page.total} items"
    _out(f"page {page.page} of {page.pages}, {items}{more}")


def _describe(item: pb.Item) -> str:
    return f"#{item.id}  {_fit(item.title, None)}  [{item.status}, priority {item.priority}]"


def cmd_items_add(args: argparse.Namespace) -> None:
    with _client(args) as api:
        item = api.create_item(args.title, description=args.description, priority=args.priority)
    _out(f"added {_describe(item)}")


def cmd_items_done(args: argparse.Namespace) -> None:
    with _client(args) as api:
        item = api.patch_item(args.id, status="completed")
    _out(f"completed {_describe(item)}")


def cmd_items_rm(args: argparse.Namespace) -> None:
    with _client(args) as api:
        api.delete_item(args.id)
    _out(f"deleted #{args.id}")


def cmd_stats(args: argparse.Namespace) -> None:
    with _client(args) as api:
        s = api.stats()
    _out(
        f"{s.total} items: {s.active} active, {s.completed} completed; "
        f"average priority {s.avg_priority:.1f}"
    )


# -- watch ----------------------------------------------------------------------------------


def event_line(event: pb.DomainEvent) -> str:
    from service.pb import duckcast_pb2 as pb

    if event.type == pb.RESET:
        return (
            f"{event.seq:>6}  reset    older events are gone from the server's log: "
            "reload (duckcast items list)"
        )
    if event.type == pb.DELETED:
        # WebSocket events carry the item as it was; SSE ones only its id.
        was = f"  {_fit(event.item.title, None)}" if event.item.id else ""
        return f"{event.seq:>6}  deleted  #{event.deleted_id}{was}"
    kind = "created" if event.type == pb.CREATED else "updated"
    return f"{event.seq:>6}  {kind}  {_describe(event.item)}"


def cmd_watch(args: argparse.Namespace) -> None:
    import orjson

    from service.wire import event_json

    with _client(args) as api:
        owner = api.me().id if args.mine else None
        with api.subscribe(
            args.transport, since=args.since, owner_id=owner, status=args.status
        ) as events:
            print(
                f"watching {api.url} over {args.transport} from seq {events.last_seq} "
                "(Ctrl-C to stop)",
                file=sys.stderr,
                flush=True,
            )
            for event in events:
                _out(orjson.dumps(event_json(event)).decode() if args.json else event_line(event))


# -- the parser -----------------------------------------------------------------------------


def add_commands(sub: Any) -> None:
    """Add the client commands to `duckcast`'s subparsers (service.cli)."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--url", help="the Duckcast server (DUCKCAST_URL; default: the last one logged in to)"
    )

    def command(parent: Any, name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name,
            parents=[server],
            help=help,
            description=help,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=_runs(func))
        return p

    for name, func, what in (
        ("register", cmd_register, "create an account and log in to it"),
        ("login", cmd_login, "log in; the token is kept in $XDG_CONFIG_HOME/duckcast (0600)"),
    ):
        p = command(sub, name, func, what)
        p.add_argument("-u", "--username", help="prompted for when not given")
        p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    command(sub, "logout", cmd_logout, "revoke the session and forget its token")
    command(sub, "stats", cmd_stats, "item counts")

    items = sub.add_parser("items", help="list, add, complete and remove items")
    items_sub = items.add_subparsers(dest="items_command", required=True, metavar="COMMAND")
    ls = command(items_sub, "list", cmd_items_list, "list items, newest first")
    ls.add_argument("--mine", action="store_true", help="only items you own")
    ls.add_argument("--status", choices=STATUSES)
    ls.add_argument("-q", dest="q", metavar="TEXT", help="only items whose title contains TEXT")
    ls.add_argument("--page", type=_bounded("page", 1, 1_000_000), default=1)
    ls.add_argument("--limit", type=_bounded("limit", 1, 100), default=20)
    add = command(items_sub, "add", cmd_items_add, "add an item")
    add.add_argument("title")
    add.add_argument("--priority", type=priority, help="0 to 100 (default 0)")
    add.add_argument("--description")
    done = command(items_sub, "done", cmd_items_done, "mark an item completed")
    done.add_argument("id", type=item_id)
    rm = command(items_sub, "rm", cmd_items_rm, "delete an item")
    rm.add_argument("id", type=item_id)

    watch = command(sub, "watch", cmd_watch, "print change events as they happen, one a line")
    watch.add_argument("--json", action="store_true", help="one JSON object per event")
    watch.add_argument("--transport", choices=("ws", "sse"), default="ws")
    watch.add_argument(
        "--since", type=_bounded("since", 0, INT64_MAX), help="replay events after this seq"
    )
    watch.add_argument("--mine", action="store_true", help="only items you own")
    watch.add_argument("--status", choices=STATUSES)
