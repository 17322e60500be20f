"""Run one offline-to-online job: ``python src/main.py env=adroit_door algo=calql``."""
from o2o.cli import main

if __name__ == "__main__":
    main()
