import sys

from pipeline.cli import main, process_started_at

sys.exit(main(started_at=process_started_at()))
