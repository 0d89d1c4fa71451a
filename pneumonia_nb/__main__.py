"`python -m pneumonia_nb`: the same as the `pneumonia_nb` command."
from pneumonia_nb.cli import main

raise SystemExit(main())
