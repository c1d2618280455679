from geopath.cli import main

main()
