from prunelab.cli import main

raise SystemExit(main())
