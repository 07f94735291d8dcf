from fieldpaint.cli import main

raise SystemExit(main())
