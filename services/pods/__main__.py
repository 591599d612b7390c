"""``python -m services.pods serve|migrate``: run or migrate the pods service."""

from services.chassis.server import service_main
from services.pods.server import MIGRATIONS, NAME, build

if __name__ == "__main__":
    service_main(NAME, MIGRATIONS, build)
