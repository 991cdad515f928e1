"""Release mail: tells a researcher that a run was decided, with a link to the run's page.

The link needs a hub login; no bearer token or download link ever goes into a mail. smtplib is
blocking, so it runs in a thread.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid


class Mailer:
    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        starttls: bool = False,
        username: str = "",
        password: str = "",
        timeout: float = 20,
    ):
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.username, self.password, self.timeout = starttls, username, password, timeout

    def _send(self, msg: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password)
            smtp.send_message(msg)

    async def send(self, to: str, subject: str, body: str) -> None:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="kinetic-enclave")
        msg.set_content(body)
        await asyncio.to_thread(self._send, msg)


def decision_mail(run, run_url: str) -> tuple[str, str]:
    """Subject and body for the author of a decided run (a RunRecord): the run's page link only."""
    title = run.analysis_title or f"analysis {run.analysis_id}"
    if run.state == "released":
        subject = f"Your enclave run {run.id} was approved and released"
        what = (
            "The outputs of your run were approved by the output reviewers and released.\n"
            "Sign in and download them from the run's page:"
        )
    else:
        subject = f"Your enclave run {run.id} was not released"
        what = "An output reviewer did not approve the release. The reasons are on the run's page:"
    body = (
        f"Hello,\n\n{what}\n\n  {run_url}\n\nAnalysis: {title}\nMessage: {run.message}\n\n"
        "— Kinetic Workspaces enclave\n"
    )
    return subject, body
