from nblab.cli import main

raise SystemExit(main())
