"""
The job library: what a job is asked to be (``spec``), its record and states
(``record``), where records and output live (``store``, ``output``,
``datadir``), and the service that starts, stops and ends jobs
(``service``). Nothing here knows HTTP.
"""
