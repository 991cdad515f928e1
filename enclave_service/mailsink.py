"""A local SMTP sink (aiosmtpd) that writes every message it receives to a folder as ``.eml``.

Used by the demo (read the mails in ``<folder>``) and the tests. It accepts anything and delivers
nothing: never point production at it.

    python -m enclave_service.mailsink --port 8025 --dir state/mail
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from aiosmtpd.controller import Controller


class FolderHandler:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self.count:04d}.eml"
        tmp = self.folder / (name + ".tmp")
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode()
        header = f"X-Sink-Rcpt-To: {', '.join(envelope.rcpt_tos)}\r\n".encode()
        tmp.write_bytes(header + data)
        tmp.replace(self.folder / name)  # readers never see half a mail
        return "250 Message accepted for delivery"


class MailSink:
    """In-process sink (a thread, via aiosmtpd's Controller)."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", port: int = 8025):
        self.folder = Path(folder)
        self.handler = FolderHandler(self.folder)
        self.controller = Controller(self.handler, hostname=host, port=port)

    def start(self) -> MailSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def messages(self) -> list[Path]:
        return sorted(self.folder.glob("*.eml"))


def main(argv=None):
    p = argparse.ArgumentParser(description="Local SMTP sink writing mails to a folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8025)
    p.add_argument("--dir", default="state/mail")
    args = p.parse_args(argv)
    sink = MailSink(Path(args.dir), args.host, args.port).start()
    print(f"mail sink on {args.host}:{args.port}, writing to {args.dir}", flush=True)
    try:
        asyncio.new_event_loop().run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
