"""``python -m services.domains serve|migrate``: run or migrate the domains service."""

from services.chassis.server import service_main
from services.domains.server import MIGRATIONS, NAME, build

if __name__ == "__main__":
    service_main(NAME, MIGRATIONS, build)
