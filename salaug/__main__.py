from salaug.cli import main

raise SystemExit(main())
