"""`personae demo`: the whole flow, offline, on the shipped shapes-world model and the tiny model.

It sits above the jobs (it runs prepare, train, generate, animate, storyboard, compare and the world bench as
a user would) and below the command line: flow.py is the walk-through and its index, world.py its
shapes-world part.
"""
