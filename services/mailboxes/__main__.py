"""``python -m services.mailboxes serve|migrate``: run or migrate the mailboxes service."""

from services.chassis.server import service_main
from services.mailboxes.server import MIGRATIONS, NAME, build

if __name__ == "__main__":
    service_main(NAME, MIGRATIONS, build)
