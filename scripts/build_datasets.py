"""Build local Minari datasets from the DAPG assets: ``python scripts/build_datasets.py build-adroit --help``."""
from o2o.data.build.cli import main

if __name__ == "__main__":
    main()
